"""Similarity maps on the bundled demo cube: where else does it look like this pixel?

Reproduces ``docs/images/similarity_demo.png`` (``docs/analysis.md``)::

    PYTHONPATH=src nice -n 5 python scripts/similarity_demo.py

The demo cube (WorldCereal training patch 00002806639B424A, Flanders, 2017-08 ..
2018-11, 64 x 64 px) is embedded in memory with the shipped default model (fused S1 + S2
``fast``); the reference is the embedding of a pixel in the village on the left of the
patch on 2018-05-26, and every pixel-date is compared with it (cosine similarity and
the Euclidean distance in whitened space). Contains modified Copernicus Sentinel data
2017-2018 (WorldCereal training data, ESA WorldCereal consortium).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from latentcube.analysis import plot_similarity, similar

ROOT = Path(__file__).resolve().parents[1]
#: A built-up pixel of the village (CRS EPSG:32631, pixel centre) and the date.
EXAMPLE = (501_515.0, 5_629_385.0)
DATE = "2018-05-26"
SHOW = ["2017-11-02", "2018-05-26", "2018-07-20", "2018-10-13"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "similarity_demo.png")
    args = ap.parse_args()
    from latentcube.bundle import default_model_path
    from latentcube.cube.readers import load_demo_cube
    from latentcube.inference import embed, embedding_dataset
    from latentcube.plotting import true_colour

    cube = load_demo_cube()
    emb = embedding_dataset(embed(cube, default_model_path())).compute()
    sim = similar(emb, x=EXAMPLE[0], y=EXAMPLE[1], time=DATE).compute()
    raw = similar(emb, x=EXAMPLE[0], y=EXAMPLE[1], time=DATE, centre=False).compute()
    for name, r in (("centred", sim), ("raw", raw)):
        cos = r["cosine"].values
        print(
            f"{name} cosine similarity: median {np.nanmedian(cos):.2f}, "
            f"5-95% {np.nanpercentile(cos, 5):.2f} .. {np.nanpercentile(cos, 95):.2f}"
        )
    print(f"reference vector: {np.round(sim['reference'].values, 3).tolist()}")
    background = np.nan_to_num(true_colour(cube, DATE), nan=0.5)
    path = plot_similarity(
        sim,
        args.out,
        times=SHOW,
        background=background,
        background_title=f"true colour {DATE} (+ = example)",
        overwrite=True,
    )
    print(f"[figure] {path}")


if __name__ == "__main__":
    main()

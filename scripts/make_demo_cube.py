"""Derive the bundled demo cube from a real WorldCereal S1+S2 patch in ../shared/data.

Usage: ``python scripts/make_demo_cube.py [--shared ../shared/data]``. Writes
``src/latentcube/samples/demo_flanders.zarr.zip``: the patch 00002806639B424A
(Flanders, near Kortrijk; 64 x 64 px at 10 m, EPSG:32631) with all ten S2 bands
and S1 VV/VH, restricted to dates with at least 50 % clear pixels. S2 is stored
as uint16 with scale 1e-4, the source's own quantisation, so values equal the
source exactly; S1 (normalised to [0, 1]) as uint16 with scale 1/65000.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from latentcube.cube.readers import read_worldcereal_patch
from latentcube.cube.sentinel2 import drop_invalid_dates
from latentcube.io import write_zarr

ROOT = Path(__file__).resolve().parents[1]
PATCH = "worldcereal_s1_s2_training_patches_flanders/00002806639B424A"
OUT = ROOT / "src" / "latentcube" / "samples" / "demo_flanders.zarr.zip"
MIN_VALID_FRACTION = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cube = read_worldcereal_patch(args.shared / PATCH)
    cube = drop_invalid_dates(cube, MIN_VALID_FRACTION)
    cube.attrs.update(
        {
            "title": "latentcube demo cube: WorldCereal patch 00002806639B424A (Flanders, BE)",
            "derived_by": "scripts/make_demo_cube.py",
            "derivation": f"dates with >= {MIN_VALID_FRACTION:.0%} clear S2 pixels (SCL)",
            "upstream": (
                "github.com/WorldCereal/worldcereal-classification, "
                "tests/worldcerealtests/testresources/worldcerealtraining/00002806639B424A, "
                "commit 5db1e24d918f99e5b2471b826fbcb8fd2afea252"
            ),
            "license": "MIT (WorldCereal); Copernicus Sentinel data: free and open",
            "attribution": (
                "Contains modified Copernicus Sentinel data 2017–2018. WorldCereal training "
                "patch, MIT licence (c) ESA WorldCereal; cite Van Tricht, K. et al. (2023), "
                "WorldCereal: a dynamic open-source system for global-scale, seasonal, and "
                "reproducible crop and irrigation mapping, Earth Syst. Sci. Data 15, 5491–5515."
            ),
            "source_files": ", ".join(
                sorted(p.name for p in (args.shared / PATCH).glob("S[12]_*.nc"))
            ),
            "regenerate": "python scripts/make_demo_cube.py",
        }
    )
    encoding = {
        "s2": {
            "dtype": "uint16",
            "scale_factor": np.float32(1e-4),
            "_FillValue": np.uint16(0),
            "chunks": (cube.sizes["time"], 1, 64, 64),
        },
        "s1": {
            "dtype": "uint16",
            "scale_factor": np.float32(1 / 65000),
            "_FillValue": np.uint16(65535),
            "chunks": (cube.sizes["time"], 1, 64, 64),
        },
    }
    # reflectance 0 is a valid value but also the fill value: store it as 1e-4
    cube["s2"] = cube["s2"].where(~(cube["s2"] == 0), np.float32(1e-4))
    path = write_zarr(cube, args.out, overwrite=True, encoding=encoding)
    size = path.stat().st_size
    print(f"wrote {path}: {size} bytes ({size / 2**20:.2f} MiB), {dict(cube.sizes)}")


if __name__ == "__main__":
    main()

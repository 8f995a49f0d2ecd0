"""The end-to-end demo: real cube -> windows -> S2 autoencoder -> dense embedding -> Zarr -> PNG.

This is the spine of the package in one function, :func:`run_demo`, that the
``latentcube demo`` command calls. Each step uses the same public function a
user would call on their own data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """What :func:`run_demo` did: files written, sizes, timings and quality figures."""

    out_dir: Path
    cube_path: Path
    checkpoint: Path
    embedding: Path
    figure: Path
    cube_shape: dict[str, int]
    embedding_shape: dict[str, int]
    n_train_windows: int
    n_val_windows: int
    epochs: int
    best_val_centre_mae: float
    valid_pixel_dates: int
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A one-page, human-readable summary."""

        def size(p: Path) -> str:
            n = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
            return f"{n / 2**20:.2f} MiB"

        c, e = self.cube_shape, self.embedding_shape
        lines = [
            "latentcube demo: summary",
            "",
            f"input cube       {self.cube_path}",
            f"                 {c['time']} dates x {c['band']} S2 bands x {c['y']} x {c['x']} px"
            + (f", S1 {c['s1_band']} bands" if "s1_band" in c else ""),
            f"training windows {self.n_train_windows} train / {self.n_val_windows} validation "
            "(split by spatial blocks)",
            f"training         {self.epochs} epochs, best validation centre-pixel MAE "
            f"{self.best_val_centre_mae:.4f} (reflectance)",
            f"checkpoint       {self.checkpoint} ({size(self.checkpoint)})",
            f"embedding        {self.embedding} ({size(self.embedding)})",
            f"                 {e['feature']} features x {e['time']} dates x {e['y']} x "
            f"{e['x']} px, "
            f"{self.valid_pixel_dates} valid pixel-dates",
            f"figure           {self.figure}",
            "",
            "timings (s)      " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()),
        ]
        return "\n".join(lines)


def run_demo(
    out_dir: str | Path = "latentcube-demo",
    *,
    cube_path: str | Path | None = None,
    variant: Literal["fast", "tiny"] = "fast",
    train_seconds: float = 120.0,
    seed: int = 42,
    overwrite: bool = True,
    progress: bool = True,
    log: Any = print,
    pretrained: bool = False,
) -> DemoResult:
    """Run the whole pipeline once on a real cube.

    Parameters
    ----------
    out_dir
        Folder for the checkpoint, embedding store and figure.
    cube_path
        A cube :func:`latentcube.open_cube` can read; default the shipped
        Flanders S1+S2 demo cube.
    variant
        Model configuration to train (``fast`` for the demo, ``tiny`` for tests).
    train_seconds
        Wall-clock budget of the training loop.
    seed
        Seed of the split, the window draw and the training.
    overwrite
        Replace an earlier demo output in ``out_dir``.
    progress
        Show progress bars.
    log
        Callable receiving one line per step.
    pretrained
        Skip training: embed with the fused S1 + S2 model shipped with latentcube
        (:func:`latentcube.bundle.default_model_path`).

    Returns
    -------
    DemoResult
        Paths, sizes, timings; ``summary()`` formats them.
    """
    from latentcube.bundle import ModelBundle
    from latentcube.cube.readers import demo_cube_path, open_cube
    from latentcube.io import check_disjoint
    from latentcube.training import fit_autoencoder

    if cube_path is not None:
        check_disjoint(out_dir, [cube_path])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    src = Path(cube_path) if cube_path is not None else demo_cube_path()
    cube = open_cube(src).load()
    timings["read"] = time.perf_counter() - t0
    log(f"[1/5] cube {src.name}: {dict(cube.sizes)}")

    if pretrained:
        return _run_pretrained(cube, src, out, timings, progress, log)

    t0 = time.perf_counter()
    result = fit_autoencoder(
        [cube],
        variant,
        out / "model",
        sensor="s2",
        seed=seed,
        train={"max_seconds": train_seconds},
        resume=not overwrite,
        overwrite=overwrite,
        progress=progress,
        provenance={"cube": str(src), **cube.attrs},
        log=lambda line: log(f"[2/5] windows: {line}"),
    )
    timings["train"] = time.perf_counter() - t0
    log(f"[3/5] trained {result.epochs} epochs, best val centre MAE {result.best_val:.4f}")

    bundle = ModelBundle.load(result.checkpoint, sensor="s2")
    trained = dict(
        checkpoint=Path(result.checkpoint), n_train_windows=result.n_train,
        n_val_windows=result.n_val, epochs=result.epochs,
        best_val_centre_mae=float(result.best_val),
    )  # fmt: skip
    return _embed_and_plot(cube, bundle, src, out, timings, progress, log, trained, sensor="s2")


def _run_pretrained(
    cube: Any, src: Path, out: Path, timings: dict[str, float], progress: bool, log: Any
) -> DemoResult:
    """Demo steps 2-5 with the shipped fused model instead of training."""
    from latentcube.bundle import ModelBundle, default_model_path

    path = default_model_path()
    bundle = ModelBundle.load(path, kind="fusion")
    meta = bundle.meta
    log(f"[2/5] shipped model {path} ({'+'.join(bundle.sensors)}, {meta['mode']})")
    log("[3/5] no training")
    metrics = meta.get("metrics", {})
    trained = dict(
        checkpoint=path / "model.pt", n_train_windows=0, n_val_windows=0,
        epochs=int(metrics.get("epoch", 0)),
        best_val_centre_mae=float(metrics.get("best_val_centre_mae", np.nan)),
    )  # fmt: skip
    return _embed_and_plot(cube, bundle, src, out, timings, progress, log, trained)


def _embed_and_plot(
    cube: Any,
    bundle: Any,
    src: Path,
    out: Path,
    timings: dict[str, float],
    progress: bool,
    log: Any,
    trained: dict[str, Any],
    **embed_options: Any,
) -> DemoResult:
    """Demo steps 4-5: embed the cube with ``bundle``, write the store, plot; the result.

    ``trained``: the :class:`DemoResult` fields of the model (checkpoint, window
    counts, epochs, best validation centre-pixel MAE).
    """
    from latentcube.inference import embed, open_embedding, write_embedding
    from latentcube.plotting import plot_demo

    t0 = time.perf_counter()
    lazy = embed(cube, bundle, **embed_options)
    emb_path = write_embedding(lazy, out / "embedding.zarr", overwrite=True, progress=progress)
    emb = open_embedding(emb_path).load()
    timings["embed"] = time.perf_counter() - t0
    log(f"[4/5] embedding written to {emb_path}")
    t0 = time.perf_counter()
    fig = plot_demo(cube, emb["embedding"], out / "demo.png")
    timings["plot"] = time.perf_counter() - t0
    log(f"[5/5] figure {fig}")
    return DemoResult(
        out_dir=out,
        cube_path=src,
        embedding=Path(emb_path),
        figure=Path(fig),
        cube_shape={str(k): int(v) for k, v in cube.sizes.items()},
        embedding_shape={str(k): int(v) for k, v in emb["embedding"].sizes.items()},
        valid_pixel_dates=int(emb["valid"].sum()),
        timings=timings,
        **trained,
    )

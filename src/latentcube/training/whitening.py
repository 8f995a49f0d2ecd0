"""Whiten a trained model's embedding: fit, record, save (``latentcube whiten``).

The model's output (a stage-1 latent or the fused embedding) is whitened by a
fixed affine map fitted without labels on the training windows of the cubes it
was trained on (the split of training with the same seed): principal axes,
largest variance first, each scaled to unit variance. The decoders undo the map,
so reconstructions stay the same; Euclidean distances between embeddings stop
counting correlated axes several times over. See
:mod:`latentcube.models.whitening`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import xarray as xr

from latentcube.bundle import ModelBundle, resolve_bundle
from latentcube.errors import OutputError
from latentcube.io import check_disjoint, check_writable, locked

if TYPE_CHECKING:
    from latentcube.models.fusion import FusionModel

__all__ = ["whiten"]

#: Metadata the checkpoint writers set themselves; everything else in a model's
#: metadata is carried over to its whitened copy (the run bookkeeping is not).
_OWN_META = {
    "format",
    "format_version",
    "latentcube_version",
    "environment",
    "model_config",
    "sensor",
    "bands",
    "fusion_config",
    "mode",
    "sensors",
    "autoencoder_configs",
    "sensor_specs",
}
#: A training run's bookkeeping: not carried over to a copy outside the run.
_RUN_META = {"run_id"}


def whiten(
    bundle: ModelBundle | str | os.PathLike[str],
    cubes: Sequence[xr.Dataset | str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    seed: int = 42,
    max_windows: int = 20_000,
    overwrite: bool = False,
) -> ModelBundle:
    """Write a copy of a model whose embedding axes are decorrelated with unit variance.

    Parameters
    ----------
    bundle
        The model (a bundle, or its file or folder); not modified (a copy is
        whitened).
    cubes
        The cubes the model was trained on (opened, or paths): the windows of
        their training split with ``seed`` are fitted on.
    out
        The whitened model file (``.pt``, with a ``.json`` sidecar).
    seed
        Seed of the training split (as in training) and of the draw of windows.
    max_windows
        Windows drawn to fit on.
    overwrite
        Replace an existing ``out`` (only once the copy is complete).

    Returns
    -------
    ModelBundle
        The whitened copy, saved at ``out``; its metadata are the original's
        plus ``whitening`` (source, cubes, seed, windows, axis variances).

    Raises
    ------
    OutputError
        ``out`` is not a ``.pt`` file, is the input model or cube, exists
        (without ``overwrite``), is in use or cannot be written; checked before
        anything is read.
    """
    out = Path(out)
    if out.suffix != ".pt":
        raise OutputError(f"the whitened model must be a .pt file, got {out}")
    source = bundle.path if isinstance(bundle, ModelBundle) else resolve_bundle(bundle)
    if source is not None and out.resolve() == Path(source).resolve():
        raise OutputError(f"{out} is the input model: write the whitened copy elsewhere")
    paths = [c for c in cubes if not isinstance(c, xr.Dataset)]
    check_disjoint(out, [source, *paths])
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it")
    check_writable(out)
    with locked(out):
        if isinstance(bundle, ModelBundle):
            name = str(bundle.path)
            bundle = ModelBundle(copy.deepcopy(bundle.model), dict(bundle.meta), bundle.path)
        else:
            name = os.fspath(bundle)
            bundle = ModelBundle.load(bundle)
        from latentcube.cube.readers import open_cube

        loaded = [c if isinstance(c, xr.Dataset) else open_cube(c).load() for c in cubes]
        n_windows = _fit(bundle, loaded, seed=seed, max_windows=max_windows)
        var = [round(float(v), 6) for v in bundle.model.whitening.variance.tolist()]
        extra: dict[str, Any] = {
            k: v for k, v in bundle.meta.items() if k not in _OWN_META | _RUN_META
        }
        extra["whitening"] = {
            "source_model": name,
            "cubes": [str(c) for c in paths],
            "seed": seed,
            "windows": min(n_windows, max_windows),
            "axis_variances": var,
        }
        ModelBundle(bundle.model).save(out, extra=extra)
    return ModelBundle.load(out)


def _fit(bundle: ModelBundle, cubes: Sequence[xr.Dataset], *, seed: int, max_windows: int) -> int:
    """Fit the bundle's whitening (in place) on its training windows; their number."""
    if bundle.kind == "fusion":
        from latentcube.data.multisensor import split_fusion_windows
        from latentcube.training.fusion import fit_fusion_whitening

        ftr, _ = split_fusion_windows(cubes, bundle.sensors, seed=seed)
        model = cast("FusionModel", bundle.model)
        fit_fusion_whitening(model, ftr, max_windows=max_windows, seed=seed)
        return len(ftr)
    from latentcube.data.windows import split_windows
    from latentcube.training.stage1 import fit_whitening

    c = bundle.autoencoder(bundle.sensors[0]).config
    tr, _ = split_windows(cubes, c.sensor, c.bands, seed=seed, window=c.window)
    fit_whitening(bundle.autoencoder(c.sensor), tr, max_windows=max_windows, seed=seed)
    return len(tr)

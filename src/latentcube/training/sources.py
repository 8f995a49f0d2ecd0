"""Where a training run's windows come from: cube lists, manifests, memory or streaming.

``latentcube train`` and the recipes take cubes as paths, opened datasets or
output folders of ``latentcube cube --sites`` (:func:`latentcube.cube.sites.build_cubes`):
:func:`expand_cubes` turns such a folder (or its ``manifest.csv``) into the
stores of its sites built successfully, in manifest order.

Two sources behind one interface (:class:`~latentcube.data.source.WindowSource`):

* ``"memory"``: every cube is loaded and the windows are indices into its arrays
  (:func:`~latentcube.data.windows.split_windows`): small runs, any cube format;
* ``"stream"``: only a window index per store is kept and each batch is read
  from the Zarr stores (:class:`~latentcube.data.streaming.StreamingWindows`):
  hundreds of cubes in bounded memory. Whole stores go to training or validation
  with the split of the in-memory path (:func:`~latentcube.data.windows.split_cubes`,
  the same seed, 25 % for validation), and the windows are those the in-memory
  path cuts from the same cubes; only their order differs (chunk-local, see
  :meth:`~latentcube.data.streaming.StreamingWindows.epoch_order`).

``"auto"`` streams when a manifest was given and loads otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentcube.errors import CubeError

__all__ = ["DATA_MODES", "expand_cubes", "is_zarr_store", "stream_split", "use_streaming"]

#: How a run reads its windows.
DATA_MODES = ("auto", "memory", "stream")


def _manifest_folder(p: Path) -> Path | None:
    """The ``build_cubes`` output folder that ``p`` names (the folder or its manifest)."""
    from latentcube.cube.sites import MANIFEST

    if p.is_dir() and (p / MANIFEST).is_file():
        return p
    if p.name == MANIFEST and p.is_file():
        return p.parent
    return None


def expand_cubes(cubes: Sequence[Any]) -> tuple[list[Any], bool]:
    """``cubes`` with every manifest replaced by the stores it lists as built.

    Parameters
    ----------
    cubes
        Datasets, cube paths, ``build_cubes`` output folders or their ``manifest.csv``.

    Returns
    -------
    tuple
        The cubes, and whether any manifest was given.

    Raises
    ------
    CubeError
        A manifest lists no site built successfully.
    """
    from latentcube.cube.sites import manifest_stores

    out: list[Any] = []
    any_manifest = False
    for c in cubes:
        folder = _manifest_folder(Path(c)) if isinstance(c, (str, os.PathLike)) else None
        if folder is None:
            out.append(c)
            continue
        stores = manifest_stores(folder)
        if not stores:
            raise CubeError(f"{folder}: the manifest lists no site built successfully ('ok')")
        out.extend(stores)
        any_manifest = True
    return out, any_manifest


def use_streaming(data: str, from_manifest: bool) -> bool:
    """Whether a run with ``data`` (``"auto"``, ``"memory"``, ``"stream"``) streams."""
    if data not in DATA_MODES:
        raise ValueError(f"data must be one of {', '.join(DATA_MODES)}, got {data!r}")
    return data == "stream" or (data == "auto" and from_manifest)


def is_zarr_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Zarr v3 directory store or a zipped store."""
    p = Path(path)
    return (p.is_dir() and (p / "zarr.json").is_file()) or (p.is_file() and p.suffix == ".zip")


def stream_split(
    paths: Sequence[Any],
    sensor: str,
    bands: Sequence[str],
    *,
    window: int = 15,
    seed: int = 42,
    val_fraction: float = 0.25,
    stride_t: int = 3,
    stride_xy: int = 3,
    progress: bool = False,
    min_bands: int | None = None,
) -> tuple[Any, Any]:
    """Training and validation windows streamed from Zarr stores, split by store.

    ``min_bands`` (band-mask models): a store may lack some of ``bands`` as long as it
    has at least this many of them.

    Returns
    -------
    tuple
        ``(train, validation)`` :class:`~latentcube.data.streaming.StreamingWindows`:
        training windows draw 11 of 20 dates, validation windows take consecutive
        dates, as :func:`~latentcube.data.windows.split_windows` cuts them.

    Raises
    ------
    CubeError
        Fewer than two stores, or an input that is not a Zarr store.
    """
    from latentcube.data.streaming import StreamingWindows
    from latentcube.data.windows import split_cubes

    bad = [p for p in paths if not isinstance(p, (str, os.PathLike)) or not is_zarr_store(p)]
    if bad:
        raise CubeError(
            f"{bad[0] if isinstance(bad[0], (str, os.PathLike)) else 'an opened dataset'}: "
            "streamed training reads Zarr stores; write the cube with 'latentcube cube' or "
            "train in memory (--data memory)"
        )
    if len(paths) < 2:
        raise CubeError(
            "streamed training splits whole stores into training and validation and needs two "
            "or more; train on a single cube in memory (--data memory)"
        )
    train_ids, val_ids = split_cubes(range(len(paths)), (1 - val_fraction, val_fraction), seed)
    if not val_ids:
        train_ids, val_ids = train_ids[:-1], train_ids[-1:]
    common: dict[str, Any] = {
        "sensor": sensor,
        "bands": list(bands),
        "window": window,
        "stride_t": stride_t,
        "stride_xy": stride_xy,
        "seed": seed,
        "progress": progress,
        "min_bands": min_bands,
    }
    train = StreamingWindows([paths[i] for i in train_ids], mode="train", **common)
    val = StreamingWindows([paths[i] for i in val_ids], mode="consecutive", **common)
    return train, val

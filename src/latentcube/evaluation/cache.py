"""Step results of long evaluations kept on disk, so that a killed run resumes.

An evaluation is a loop of independent steps (a probe on one feature set and fold
assignment, a GPP regressor on one feature set and fold). :class:`StepCache`
stores each step's JSON result as soon as it is computed, under a SHA-256 of
everything the step depends on; a rerun reads it instead of computing again.
:func:`cached_array` keeps a computed feature cube (an embedding) the same way, as
a Zarr store. Entries are written atomically, and an unreadable one is computed
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["StepCache", "cached", "cached_array", "run_cache"]


def _update(h: Any, obj: Any) -> None:
    """Feed a value into the hash ``h``.

    Arrays give their dtype, shape and bytes; xarray objects every variable's
    name, dims and values; anything else its JSON text.
    """
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=str(obj.name))
    if isinstance(obj, xr.Dataset):
        for name in sorted(obj.variables, key=str):
            var = obj.variables[name]
            h.update(json.dumps([str(name), list(map(str, var.dims))]).encode())
            values = np.asarray(var.values)
            _update(h, values.astype(str) if values.dtype.kind == "O" else values)
    elif isinstance(obj, np.ndarray):
        h.update(str((obj.dtype.str, obj.shape)).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())


class StepCache:
    """JSON results of evaluation steps in ``folder``, keyed by what they depend on.

    Parameters
    ----------
    folder
        Where the entries live (created).
    *context
        What every step depends on (arrays and JSON-able settings); each step's
        own inputs are added by :meth:`key`.
    """

    def __init__(self, folder: str | os.PathLike[str], *context: Any) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        for part in context:
            _update(h, part)
        self.base = h.digest()

    def key(self, *parts: Any) -> str:
        """The entry name of a step with these inputs (arrays and JSON-able values)."""
        h = hashlib.sha256(self.base)
        for part in parts:
            _update(h, part)
        return h.hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result, or None (missing, or cut short: it is computed again)."""
        f = self.folder / f"{key}.json"
        try:
            return dict(json.loads(f.read_text()))
        except FileNotFoundError:
            return None
        except ValueError:
            f.unlink(missing_ok=True)
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store a result; the entry appears whole or not at all."""
        tmp = self.folder / f"{key}.json.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.folder / f"{key}.json")


def cached(
    cache: StepCache | None, parts: Sequence[Any], compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``compute()``, read from ``cache`` when a step with inputs ``parts`` is stored there.

    A missing step is computed and stored; without a cache it is just computed.
    """
    if cache is None:
        return compute()
    key = cache.key(*parts)
    result = cache.get(key)
    if result is None:
        result = compute()
        cache.put(key, result)
    return result


def cached_array(
    cache: StepCache | None, parts: Sequence[Any], compute: Callable[[], xr.DataArray]
) -> xr.DataArray:
    """``compute()``, read from ``cache`` when an array with inputs ``parts`` is stored there.

    The array (e.g. an embedding of a cube) is kept as a Zarr store written
    atomically, so a store cut short by a kill is never read; an unreadable one is
    computed again. Without a cache it is just computed.
    """
    from latentcube.io import open_zarr, write_zarr

    if cache is None:
        return compute()
    path = cache.folder / f"{cache.key(*parts)}.zarr"
    if path.exists():
        try:
            ds = open_zarr(path, chunks=None).load()
            return ds["value"].rename(ds.attrs.get("name"))
        except (OSError, ValueError, KeyError):
            shutil.rmtree(path, ignore_errors=True)
    arr = compute()
    ds = arr.to_dataset(name="value")
    ds.attrs["name"] = arr.name
    write_zarr(ds, path, overwrite=True)
    return arr


@contextmanager
def run_cache(
    out_dir: str | os.PathLike[str] | None, name: str, enabled: bool
) -> Iterator[Path | None]:
    """``<out_dir>/<name>``, the step cache of one run (None when not ``enabled``).

    The folder is removed when the run completes (its report then holds every
    result); after an error or a kill it stays, so the same call resumes.
    """
    if not enabled or out_dir is None:
        yield None
        return
    folder = Path(out_dir) / name
    yield folder
    shutil.rmtree(folder, ignore_errors=True)

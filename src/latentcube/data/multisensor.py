"""Context windows of several sensors at the same places and dates, for the fusion model.

Windows are cut on the reference sensor (S2: its centre pixel must be valid at the
centre date, as in stage 1) and the same (cube, dates, pixel) indices address
every other sensor's arrays, so the fusion model sees one window per sensor for
every sample. All sensors share the reference date axis and its day gaps (as in
stage 1, where every sensor's windows are cut on the cube's time axis); the day
offset between a sensor's own acquisition and the reference date comes from the
cube's ``<sensor>_time`` coordinate (``s1_time``) when there is one, else it is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from latentcube.data.batch import SensorBatch
from latentcube.data.windows import (
    CubeArrays,
    Windows,
    extract_windows,
    split_by_place,
)

__all__ = ["FusionWindows", "extract_fusion_windows", "sensor_offsets", "split_fusion_windows"]


def sensor_offsets(cube: xr.Dataset, sensor: str) -> np.ndarray:
    """(time,) signed days from each cube date to the sensor's matched acquisition.

    Uses the coordinate ``<sensor>_time`` when the cube has it (``NaT`` gives 0:
    the sensor is invalid on that date anyway); otherwise the sensor is taken to
    be observed on the cube's dates (offset 0).
    """
    name = f"{sensor}_time"
    n = cube.sizes["time"]
    if name not in cube.coords:
        return np.zeros(n, np.int64)
    st = cube[name].values.astype("datetime64[s]")
    ct = cube["time"].values.astype("datetime64[s]")
    ok = ~np.isnat(st)
    out = np.zeros(n, np.float64)
    out[ok] = (st[ok] - ct[ok]).astype(np.float64) / 86400.0
    return np.round(out).astype(np.int64)


@dataclass
class FusionWindows:
    """The same context windows addressed in every sensor's arrays.

    Attributes
    ----------
    windows
        Per sensor, :class:`~latentcube.data.windows.Windows` sharing the index
        arrays (cube, dates, top-left pixel) of the reference sensor.
    offsets
        Per sensor, one (time,) array per cube of signed day offsets to the
        reference date (see :func:`sensor_offsets`).
    """

    windows: dict[str, Windows]
    offsets: dict[str, list[np.ndarray]]

    def __len__(self) -> int:
        return len(next(iter(self.windows.values())))

    @property
    def sensors(self) -> tuple[str, ...]:
        """Sensors, reference first."""
        return tuple(self.windows)

    def batch(self, idx: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Materialise windows ``idx`` of every sensor.

        Returns
        -------
        dict
            Per sensor ``{"x", "mask", "gaps", "offset"}`` arrays with ``x``
            (n, T, C, W, W), ``mask`` (n, T, W, W), ``gaps`` (n, T-1) and
            ``offset`` (n,) days.
        """
        idx = np.asarray(idx)
        out: dict[str, dict[str, np.ndarray]] = {}
        for s, w in self.windows.items():
            x, mask, gaps = w.batch(idx)
            off = np.zeros(len(idx), np.int64)
            centre = w.t_idx[idx, w.n_dates // 2]
            for k, o in enumerate(self.offsets[s]):
                m = w.cube_id[idx] == k
                off[m] = o[centre[m]]
            out[s] = {"x": x, "mask": mask, "gaps": gaps, "offset": off}
        return out

    def tensors(self, idx: np.ndarray) -> dict[str, SensorBatch]:
        """:meth:`batch` as :class:`~latentcube.data.batch.SensorBatch` tensors."""
        return {
            s: SensorBatch(*(torch.from_numpy(b[k]) for k in ("x", "mask", "gaps", "offset")))
            for s, b in self.batch(idx).items()
        }

    def centre_valid(self, sensors: Sequence[str] | None = None) -> np.ndarray:
        """(N, S) whether each window's centre pixel is valid at its centre date.

        One column per sensor of ``sensors`` (default all), in that order.
        """
        names = self.sensors if sensors is None else sensors
        return np.stack([self.windows[s].centre_valid() for s in names], axis=1)

    def arrays(self) -> list[np.ndarray]:
        """Every array the windows read, sensor by sensor (for ``array_digest``)."""
        return [a for s, w in self.windows.items() for a in (*w.arrays(), *self.offsets[s])]

    def subset(self, idx: np.ndarray) -> FusionWindows:
        """The windows ``idx`` (sharing the arrays)."""
        return FusionWindows({s: w.subset(idx) for s, w in self.windows.items()}, self.offsets)

    @staticmethod
    def concat(parts: Sequence[FusionWindows]) -> FusionWindows:
        """Concatenate windows of different cubes."""
        sensors = parts[0].sensors
        return FusionWindows(
            {s: Windows.concat([p.windows[s] for p in parts]) for s in sensors},
            {s: [o for p in parts for o in p.offsets[s]] for s in sensors},
        )


def extract_fusion_windows(
    cube: xr.Dataset,
    sensors: Sequence[str],
    bands: Mapping[str, Sequence[str]] | None = None,
    **kwargs: Any,
) -> FusionWindows:
    """Cut context windows on ``sensors[0]`` and address them in every sensor.

    Parameters
    ----------
    cube
        A cube holding every sensor.
    sensors
        Sensors, reference (S2) first.
    bands
        Band order per sensor (default: every band of the cube).
    **kwargs
        Passed to :func:`~latentcube.data.windows.extract_windows` (``mode``,
        strides, ``region``, ``seed``, ...).
    """
    bands = dict(bands or {})
    arrs = {s: CubeArrays.from_cube(cube, s, bands.get(s)) for s in sensors}
    for s in sensors:
        if arrs[s].data.shape[0] != arrs[sensors[0]].data.shape[0]:
            raise ValueError(f"sensor {s!r} is not on the cube's time axis")
    ref = extract_windows(arrs[sensors[0]], sensors[0], **kwargs)
    wins = {
        s: Windows([arrs[s]], ref.cube_id, ref.t_idx, ref.iy, ref.ix, ref.window) for s in sensors
    }
    return FusionWindows(wins, {s: [sensor_offsets(cube, s)] for s in sensors})


def split_fusion_windows(
    cubes: Sequence[xr.Dataset],
    sensors: Sequence[str],
    bands: Mapping[str, Sequence[str]] | None = None,
    *,
    val_fraction: float = 0.25,
    window: int = 15,
    stride_t: int = 3,
    stride_xy: int = 3,
    seed: int = 42,
    within_cubes: bool = False,
) -> tuple[FusionWindows, FusionWindows]:
    """Training and validation windows of several sensors, split without leakage.

    The same split as :func:`~latentcube.data.windows.split_windows` (whole cubes
    with two cubes or more, spatial blocks of one cube or, with ``within_cubes``,
    of every cube otherwise; same seed, same split), so a fusion model is
    validated on the places its stage-1 models were validated on.
    """
    common: dict[str, Any] = {
        "window": window,
        "stride_t": stride_t,
        "stride_xy": stride_xy,
        "seed": seed,
    }

    def extract(cube: xr.Dataset, mode: str, region: np.ndarray | None) -> FusionWindows:
        return extract_fusion_windows(cube, sensors, bands, mode=mode, region=region, **common)

    return split_by_place(
        cubes,
        extract,
        FusionWindows.concat,
        window=window,
        val_fraction=val_fraction,
        seed=seed,
        within_cubes=within_cubes,
    )

"""Cut the learned-mask test fixtures from real patches in ../shared/data.

Writes ``flanders_4dates.npz`` beside this file: Sentinel-2 L2A digital numbers of
the WorldCereal Flanders training patch ``0000280849BAC91C`` (EPSG:32631, upper-left
corner 574680 E, 5622440 N; see the README beside this file for its source and
licence), unchanged, at four dates chosen for the learned mask's tests:

* 2018-08-04: clear (SCL vegetation and bare soil only);
* 2018-09-23: overcast (SCL cloud medium/high probability only);
* 2018-11-02: broken cloud with shadows (SCL classes 2-9);
* 2019-03-17: mostly cloudy, cirrus among it.

Arrays: ``B02``, ``B03``, ``B04``, ``B08`` (4, 64, 64) at 10 m; ``B11``, ``B12``,
``SCL`` (4, 32, 32) at 20 m; ``time`` (4,) datetime64[s]; ``x``, ``y`` pixel centres
of the 10 m grid. DN / 10000 is reflectance (processing baseline before 04.00: no
offset). About 110 KB.

And ``romania_2dates.npz``: the upper-left 64 x 64 px of the nrt Romania forest cube
(10 m, EPSG:3035; ``B2 B3 B4 B8 SCL`` saved as ``B02 B03 B04 B08 SCL``, DNs unchanged)
at 2017-07-21 (clear) and 2017-11-28 (overcast, DNs up to 18224: reflectance above
1, which the learned mask must see unclipped). EUPL-1.2 like its source: the licence
text is copied beside it. About 50 KB.

Run from the repository root: ``python tests/data/csmask/make_fixture.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("LATENTCUBE_SHARED_DATA", HERE.parents[2].parent / "shared" / "data"))
PATCH = SHARED / "worldcereal_s1_s2_training_patches_flanders" / "0000280849BAC91C"
DATES = ("2018-08-04", "2018-09-23", "2018-11-02", "2019-03-17")
OUT = HERE / "flanders_4dates.npz"
ROMANIA = SHARED / "nrt_romania_s2_l2a"
ROMANIA_DATES = ("2017-07-21", "2017-11-28")
OUT_ROMANIA = HERE / "romania_2dates.npz"


def main() -> None:
    f10 = next(PATCH.glob("S2_L2A_10m_*.nc"))
    f20 = next(PATCH.glob("S2_L2A_20m_*.nc"))
    with (
        xr.open_dataset(f10, mask_and_scale=False) as a,
        xr.open_dataset(f20, mask_and_scale=False) as b,
    ):
        days = a["timestamp"].values.astype("datetime64[D]")
        idx = [int(np.flatnonzero(days == np.datetime64(d))[0]) for d in DATES]
        out = {k: a[k].values[idx].astype(np.uint16) for k in ("B02", "B03", "B04", "B08")}
        out.update({k: b[k].values[idx].astype(np.uint16) for k in ("B11", "B12")})
        out["SCL"] = b["SCL"].values[idx].astype(np.uint8)
        out["time"] = a["timestamp"].values[idx].astype("datetime64[s]")
        out["x"], out["y"] = a["x"].values, a["y"].values
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")
    src = ROMANIA / "sentinel2_cube_subset_romania_10m.nc"
    with xr.open_dataset(src, mask_and_scale=False) as d:
        days = d["time"].values.astype("datetime64[D]")
        idx = [int(np.flatnonzero(days == np.datetime64(t))[0]) for t in ROMANIA_DATES]
        cut = (idx, slice(0, 64), slice(0, 64))
        out = {f"B0{b}": d[f"B{b}"].values[cut].astype(np.uint16) for b in (2, 3, 4, 8)}
        out["SCL"] = d["SCL"].values[cut].astype(np.uint8)
        out["time"] = d["time"].values[idx].astype("datetime64[s]")
        out["x"], out["y"] = d["x"].values[:64], d["y"].values[:64]
    np.savez_compressed(OUT_ROMANIA, **out)
    shutil.copyfile(ROMANIA / "LICENSE_nrt_EUPL-1.2.txt", HERE / "LICENSE_nrt_EUPL-1.2.txt")
    print(f"wrote {OUT_ROMANIA} ({OUT_ROMANIA.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

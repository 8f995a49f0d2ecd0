"""build_cube from local COGs vs a plain rasterio read of the same pixels; peak memory vs area.

The COGs hold the real WorldCereal Flanders pixels of tests/stac_catalog.py,
tiled ``repeat x repeat`` times (so an area of 64 * repeat pixels a side); the
catalog is a static STAC catalog on disk.

* Wall time: ``build_cube`` (search, load with odc-stac, offsets, masks,
  same-day merge, S1 smoothing and matching, staging writes, final Zarr write
  and validation) against reading every asset the builder reads with
  ``rasterio`` (``dataset.read(1)``, whole files, nothing else). Best of
  ``--repeats`` runs each, warm page cache. Target: ratio <= 2.
* Peak memory: each build runs in a fresh process; its peak RSS is reported for
  two area sizes with the same loading tile (256 px). Target: the difference
  stays within about one loading unit's arrays, i.e. no growth with area.

Usage: ``nice -n 5 python benchmarks/bench_cube.py`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

START, END = "2018-09-15", "2018-10-20"


def _catalog(work: Path, repeat: int) -> Path:
    from stac_catalog import FLANDERS, PATCH, make_catalog, read_source

    from conftest import SHARED

    cat = work / f"stac-{repeat}" / "catalog.json"
    if not cat.exists():
        make_catalog(cat.parent, read_source(SHARED / FLANDERS / PATCH), repeat=repeat)
    return cat


def _place(repeat: int) -> dict:
    from pyproj import Transformer

    from stac_catalog import LEFT, TOP

    half = 320.0 * repeat
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(LEFT + half, TOP - half)
    return {"lat": lat, "lon": lon, "size_m": 2 * half}


def _read_hrefs(cat: Path, repeat: int) -> list[str]:
    """Every asset file the builder reads: all S2 assets, the S1 items it needs."""
    import warnings

    from latentcube.cube.build import CubeSpec, _check_dates, _grid, _plan

    p = _place(repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = _grid(p["lat"], p["lon"], p["size_m"], None, 10.0)
        t0, t1 = _check_dates(START, END)
        plan = _plan(info, t0, t1, str(cat), CubeSpec(), "SCLMask")
    hrefs = [
        it.assets[k].get_absolute_href() for it in plan.s2_items for k in plan.s2_assets.values()
    ]
    need = set()
    for m in plan.s1_match[plan.s1_match >= 0]:
        need |= {int(v) for v in (m, plan.s1_prev[m], plan.s1_next[m]) if v >= 0}
    for g in sorted(need):
        for i in plan.s1_groups[g]:
            it = plan.s1_items[i]
            hrefs += [it.assets[k].get_absolute_href() for k in plan.s1_assets.values()]
    return hrefs


def _raw_read(hrefs: list[str], grid: tuple[int, int] | None = None) -> tuple[float, int]:
    """Read every file whole; with ``grid``, onto the cube's 10 m shape (nearest)."""
    import rasterio
    from rasterio.enums import Resampling

    t = time.perf_counter()
    n = 0
    for h in hrefs:
        with rasterio.open(h) as ds:
            if grid is None:
                n += ds.read(1).size
            else:
                n += ds.read(1, out_shape=grid, resampling=Resampling.nearest).size
    return time.perf_counter() - t, n


def _build(cat: Path, repeat: int, out: Path) -> float:
    import shutil

    from latentcube.cube.build import build_cube

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    build_cube(**_place(repeat), start=START, end=END, catalog=str(cat), out=out, progress=False)
    return time.perf_counter() - t


def _child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    cat = _catalog(work, args.repeat)
    secs = _build(cat, args.repeat, work / f"cube-{args.repeat}.zarr")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": secs, "peak_mib": peak_kib / 1024}))


def _run_child(work: Path, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--repeat", str(repeat), "--work", str(work)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--work", default=None)
    ap.add_argument("--sizes", default="8,16", help="repeat factors for the memory test")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-cube-") as tmp:
        work = Path(tmp)
        sizes = [int(s) for s in args.sizes.split(",")]
        print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared)")
        # 1) wall time vs a plain rasterio read, in this process, best of N
        r = sizes[0]
        cat = _catalog(work, r)
        hrefs = _read_hrefs(cat, r)
        grid = (64 * r, 64 * r)
        raw = min(_raw_read(hrefs)[0] for _ in range(args.repeats))
        npx = _raw_read(hrefs)[1]
        raw_grid = min(_raw_read(hrefs, grid)[0] for _ in range(args.repeats))
        build = min(_build(cat, r, work / "cube-time.zarr") for _ in range(args.repeats))
        print(
            f"area {64 * r} x {64 * r} px, {len(hrefs)} COGs, {npx / 1e6:.1f} M source pixels: "
            f"rasterio read {raw:.2f} s (onto the 10 m grid {raw_grid:.2f} s), "
            f"build_cube {build:.2f} s"
        )
        print(
            f"ratio build_cube / rasterio read: {build / raw:.1f} (native), "
            f"{build / raw_grid:.1f} (onto the grid); target <= 2"
        )
        # where the time goes: one profiled build
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        total = _build(cat, r, work / "cube-prof.zarr")
        prof.disable()
        cum = {}
        for (f, _, name), (_, _, _, ct, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
            if ("odc/stac" in f and name == "load") or (
                "latentcube" in f and name in ("_load_s2", "_load_s1", "write_zarr", "_plan")
            ):
                cum[name if name != "load" else "odc.stac.load"] = cum.get(name, 0.0) + ct
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(cum.items()))
        print(f"profiled build {total:.2f} s: {parts} (_load_* include odc.stac.load)")
        # 2) peak memory per area, each build in a fresh process
        rows = []
        for r in sizes:
            _catalog(work, r)
            res = _run_child(work, r)
            rows.append((r, res))
            print(
                f"area {64 * r} x {64 * r} px ({(64 * r) ** 2 / 1e6:.2f} M px): build "
                f"{res['seconds']:.2f} s, peak RSS {res['peak_mib']:.0f} MiB"
            )
        (r0, a), (r1, b) = rows[0], rows[-1]
        from latentcube.cube.build import CubeSpec

        spec = CubeSpec()
        unit_mib = spec.time_chunk * 12 * spec.tile**2 * 4 / 2**20
        print(
            f"peak RSS growth {b['peak_mib'] - a['peak_mib']:+.0f} MiB for "
            f"{(r1 / r0) ** 2:.0f}x the area; one loading unit's float32 arrays: "
            f"~{unit_mib:.0f} MiB"
        )


if __name__ == "__main__":
    main()

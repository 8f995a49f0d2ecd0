"""build_cube from local COGs vs a plain rasterio read of the same pixels; peak memory vs area.

The COGs hold the real WorldCereal Flanders pixels of tests/stac_catalog.py,
tiled ``repeat x repeat`` times (so an area of 64 * repeat pixels a side); the
catalog is a static STAC catalog on disk. ``--data varied`` (default) changes each
copy slightly (S2 DNs + 1..97, S1 power x 1.001..1.097; ``make_catalog(vary=True)``)
so that the files and the cube compress about as well as one real patch (Zstandard
on a real 64 px S2 patch: ~1.9x); ``--data tiled`` uses exact copies, which compress
~29x and so make decoding and writing unrealistically cheap on both sides (the
data of the runs before 2026-12-02 15:30 UTC).

* Wall time: ``build_cube`` (search, SCL screening, loading, offsets, masks,
  same-day merge, S1 smoothing and matching, compressed Zarr writes and
  validation) against reading every file the builder reads with ``rasterio``
  onto the cube's 10 m grid (``dataset.read(1, out_shape=grid)``, nearest,
  whole files, nothing else): all S2 assets of the dates that pass the SCL
  screening, the SCL of the screened-out dates, the S1 items needed.
  ``--repeats`` interleaved pairs (read, build), warm page cache; the headline
  is the median of the per-pair ratios, the best of each side is printed too.
  Target: ratio <= 2. For
  information: the same files read at their native size, the build with its
  chunk writes made no-ops (``_write_chunks``, which compresses and writes),
  and the write speed of some Zarr codecs on the cube. The runs are
  interleaved (read, build, read, build, ...) so that both sides see the same
  background load.
* Peak memory: each build runs in a fresh process; its peak RSS is reported for
  every area size with the same loading tile (512 px, the default). Target: the
  difference between the smallest and the largest stays within about one loading
  unit's arrays, i.e. no growth with area.

Both are measured at 512, 1024 and 2048 px a side by default (``--sizes``): 1, 4 and
16 loading units.

Usage: ``nice -n 5 python benchmarks/bench_cube.py`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# the version under test (--baseline-src children set BENCH_CUBE_SRC)
sys.path.insert(0, os.environ.get("BENCH_CUBE_SRC", str(ROOT / "src")))

START, END = "2018-09-15", "2018-10-20"


def _data() -> str:
    """The benchmark's data: ``--data``, passed to children through the environment."""
    return os.environ.get("BENCH_CUBE_DATA", "varied")


def _catalog(work: Path, repeat: int) -> Path:
    from stac_catalog import FLANDERS, PATCH, make_catalog, read_source

    from conftest import SHARED

    data = _data()
    cat = work / f"stac-{data}-{repeat}" / "catalog.json"
    if not cat.exists():
        make_catalog(
            cat.parent, read_source(SHARED / FLANDERS / PATCH), repeat=repeat,
            vary=data == "varied",
        )  # fmt: skip
    return cat


def _place(repeat: int) -> dict:
    from pyproj import Transformer

    from stac_catalog import LEFT, TOP

    half = 320.0 * repeat
    lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(LEFT + half, TOP - half)
    return {"lat": lat, "lon": lon, "size_m": 2 * half}


def _read_hrefs(cat: Path, repeat: int) -> list[str]:
    """Every asset file the builder reads.

    SCL of every S2 item (the screening), all S2 assets of the dates the
    screening keeps, the S1 items matched to them and their window neighbours.
    """
    import warnings

    import numpy as np

    from latentcube.cube.build import CubeSpec, SCLMask
    from latentcube.cube.plan import check_dates as _check_dates
    from latentcube.cube.plan import make_plan as _plan
    from latentcube.cube.plan import place_grid as _grid
    from latentcube.cube.sentinel2 import screen_s2 as _screen

    p = _place(repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = _grid(p["lat"], p["lon"], p["size_m"], None, 10.0)
        t0, t1 = _check_dates(START, END)
        plan = _plan(info, t0, t1, str(cat), CubeSpec(), "SCLMask")
        counts = _screen(plan, SCLMask())
    assert counts is not None
    keep = np.flatnonzero(counts > 0)  # min_valid_fraction 0: dates with a clear pixel
    kept_items = {i for d in keep for i in plan.s2_groups[d]}
    hrefs = []
    for i, it in enumerate(plan.s2_items):
        keys = plan.s2_assets.values() if i in kept_items else [plan.s2_assets["SCL"]]
        hrefs += [it.assets[k].get_absolute_href() for k in keys]
    need = set()
    for m in plan.s1_match[keep][plan.s1_match[keep] >= 0]:
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


def _build_without_writes(cat: Path, repeat: int, out: Path) -> float:
    """A build whose chunk writes (``_write_chunks`` of s2, s1 and their masks) do
    nothing: the write excluded (metadata and coordinates are still written)."""
    from latentcube.cube import build

    orig = build._write_chunks
    build._write_chunks = lambda *a, **k: None  # type: ignore[assignment]
    try:
        return _build(cat, repeat, out)
    finally:
        build._write_chunks = orig  # type: ignore[assignment]


def _codecs(cube: Path, repeats: int) -> str:
    """Write time (process CPU time, best of ``repeats``) and size of the cube's S2 array
    with a few Zarr codecs, in the store's chunks."""
    import shutil

    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    src = zarr.open_array(cube / "s2", mode="r")
    a = np.asarray(src[:])
    rows = []
    for name, comp in [
        ("none", None),
        ("zstd 0 (zarr default)", ZstdCodec(level=0)),
        ("zstd 1 (used until 2026-12-02)", ZstdCodec(level=1)),
        ("zstd -3", ZstdCodec(level=-3)),
        ("blosc lz4 5 shuffle (used)", BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
        ("blosc lz4 1", BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")),
        ("blosc zstd 1", BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")),
        ("blosc zstd 1 bitshuffle", BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")),
    ]:
        best = float("inf")
        tmp = cube.parent / "codec.zarr"
        for _ in range(repeats):
            shutil.rmtree(tmp, ignore_errors=True)
            z = zarr.create_array(
                tmp, shape=a.shape, chunks=src.chunks, dtype="f4", compressors=comp,
                fill_value=np.nan, config={"write_empty_chunks": True},
            )  # fmt: skip
            t = time.process_time()
            z[:] = a
            best = min(best, time.process_time() - t)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        rows.append(f"{name} {best:.3f} s / {size / 2**20:.1f} MiB")
    return f"s2 {a.nbytes / 2**20:.0f} MiB float32: " + ", ".join(rows)


def _child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    cat = _catalog(work, args.repeat)
    if args.warm:  # a first build for imports and page cache, then the timed one
        _build(cat, args.repeat, work / f"cube-{args.repeat}-{os.getpid()}.zarr")
    secs = _build(cat, args.repeat, work / f"cube-{args.repeat}-{os.getpid()}.zarr")
    import latentcube

    assert (
        Path(latentcube.__file__)
        .resolve()
        .is_relative_to(Path(os.environ.get("BENCH_CUBE_SRC", ROOT / "src")).resolve())
    ), latentcube.__file__
    from _memory import peak_rss_mib  # VmHWM: ru_maxrss would include the parent's peak

    print(json.dumps({"seconds": secs, "peak_mib": peak_rss_mib()}))


def _run_child(work: Path, repeat: int, src: Path | None = None, warm: bool = False) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--repeat", str(repeat), "--work", str(work)]
        + (["--warm"] if warm else []),
        check=True,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(src or ROOT / "src"),
            "BENCH_CUBE_SRC": str(src or ROOT / "src"),
        },
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--work", default=None)
    ap.add_argument("--sizes", default="8,16,32", help="repeat factors (64 px each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--data",
        choices=("varied", "tiled"),
        default=None,
        help="copies of the patch changed slightly (default) or exact (see above)",
    )
    ap.add_argument(
        "--baseline-src",
        default=None,
        help="the src folder of another version (e.g. from `git archive <rev> src`): its "
        "build time is measured in the same run, alternating with this version's",
    )
    args = ap.parse_args()
    if args.data is not None:  # children inherit it
        os.environ["BENCH_CUBE_DATA"] = args.data
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-cube-") as tmp:
        work = Path(tmp)
        sizes = [int(s) for s in args.sizes.split(",")]
        import numpy as np

        print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared); data: {_data()}")
        # 1) wall time vs a plain rasterio read, in this process, best of N, both sizes
        for r in sizes:
            cat = _catalog(work, r)
            hrefs = _read_hrefs(cat, r)
            grid = (64 * r, 64 * r)
            npx = _raw_read(hrefs)[1]
            _build(cat, r, work / f"cube-warm-{r}.zarr")  # imports and page cache, untimed
            # interleaved, so both sides see the same background load; best of N each
            runs = []
            cpu = []  # process CPU time of the read onto the grid and of the build, per pair
            for _ in range(args.repeats):
                c0 = time.process_time()
                read_grid = _raw_read(hrefs, grid)[0]
                c1 = time.process_time()
                built = _build(cat, r, work / f"cube-time-{r}.zarr")
                cpu.append((time.process_time() - c1) / (c1 - c0))
                runs.append(
                    (
                        read_grid,
                        built,
                        _raw_read(hrefs)[0],
                        _build_without_writes(cat, r, work / f"cube-nowrite-{r}.zarr"),
                    )
                )
            raw_grid, build, raw, nowrite = (min(col) for col in zip(*runs, strict=True))
            paired = sorted(b / a for a, b, _, _ in runs)
            med = float(np.median(paired))
            print(
                f"area {64 * r} x {64 * r} px, {len(hrefs)} COGs read, {npx / 1e6:.1f} M source "
                f"pixels: rasterio read onto the 10 m grid {raw_grid:.2f} s (native size "
                f"{raw:.2f} s), build_cube {build:.2f} s (with the chunk writes made no-ops "
                f"{nowrite:.2f} s), best of {args.repeats} each"
            )
            print(
                f"  ratio build_cube / rasterio read onto the grid: median of {len(paired)} "
                f"paired runs {med:.2f} (range {paired[0]:.2f}-{paired[-1]:.2f}); best of "
                f"{args.repeats} each {build / raw_grid:.2f}; target <= 2. For information: vs "
                f"native read {build / raw:.2f}, build without writes / read onto the grid "
                f"{nowrite / raw_grid:.2f} (best of each); CPU time build / read, median of "
                f"the pairs {float(np.median(cpu)):.2f} (process time; the read uses one core); "
                f"load average after: {os.getloadavg()[0]:.2f}"
            )
        r = sizes[0]
        cat = _catalog(work, r)
        mid = sizes[min(1, len(sizes) - 1)]  # 1024 px: 120 MiB of S2
        print("codecs, " + _codecs(work / f"cube-time-{mid}.zarr", args.repeats))
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
                "latentcube" in f
                and name
                in (
                    "load_s2",
                    "merge_s2_planes",
                    "load_s1",
                    "write_zarr",
                    "make_plan",
                    "screen_s2",
                    "read_aligned",
                    "write_store",
                )
            ):
                key = name if name != "load" else "odc.stac.load"
                cum[key] = cum.get(key, 0.0) + ct
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(cum.items()))
        print(
            f"profiled build {total:.2f} s (main thread only): {parts} (load_s2 and screen_s2 "
            "include their reads: read_aligned, or odc.stac.load when the sources are not "
            "grid-aligned; load_s2 also the S2 merge, merge_s2_planes; load_s1 runs on a "
            "helper thread, and write_store and the chunk writes on the writer thread, so "
            "they do not show here; write_zarr only runs when a date is dropped after the "
            "full read)"
        )
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
        if args.baseline_src:
            base_src = Path(args.baseline_src).resolve()
            for r in sizes:
                pairs = [
                    (
                        _run_child(work, r, base_src, warm=True)["seconds"],
                        _run_child(work, r, warm=True)["seconds"],
                    )
                    for _ in range(args.repeats)
                ]
                old, new = (min(col) for col in zip(*pairs, strict=True))
                speedup = float(np.median([a / b for a, b in pairs]))
                print(
                    f"area {64 * r} x {64 * r} px: baseline {base_src} build {old:.2f} s, this "
                    f"version {new:.2f} s (best of {args.repeats}, alternating, warm): "
                    f"{old / new:.1f}x faster (median of the paired runs {speedup:.1f}x)"
                )
        from latentcube.cube.build import CubeSpec

        spec = CubeSpec()
        unit_mib = spec.time_chunk * 12 * spec.tile**2 * 4 / 2**20
        print(
            f"peak RSS growth {b['peak_mib'] - a['peak_mib']:+.0f} MiB for "
            f"{(r1 / r0) ** 2:.0f}x the area; one loading unit's float32 arrays: "
            f"~{unit_mib:.0f} MiB"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

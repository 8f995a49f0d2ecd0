"""The learned cloud mask's cost: per 512 x 512 px date, and in a build against SCL.

* Mask alone: :meth:`CSMask.by_date` on one date of a 512 x 512 px loading unit plus
  the mask's context halo (real reflectance: the WorldCereal Flanders patch of
  tests/stac_catalog.py, mirrored to the size), the way a build calls it; best and
  median of ``--repeats`` warm calls, and CPU time. Also 4 dates per call on 2
  concurrent network calls (the default ``calls=2``) and one at a time, with 2
  onnxruntime threads, in batches of 4 tiles, and at 10 m (``scale=1``); and the
  network call alone on one prepared 256 px tile (1 thread): the part no code around
  it can remove.
* Builds: ``build_cube`` on the local STAC catalog of ``benchmarks/bench_cube.py``
  (512 x 512 px, S2 + S1, 4 dates, one of them all cloud in SCL), with
  ``mask="scl"`` (default), ``"csmask"``, ``"csmask"`` with 2 onnxruntime threads and
  ``"scl+csmask"``, interleaved in ``--repeats`` rounds in one process after a warm-up
  of each (the model's session is loaded once per process, like the catalog's files);
  medians and the median of the per-round ratios to SCL, in wall time and in process
  CPU time (less moved by other processes on a shared machine). The learned mask's own
  wall time inside each build is summed from its calls, and the CPU time of the copy a
  build makes when it drops a date after reading it (``drop_dates``: the kept dates'
  stored values into a new store). Beside it, on the same staging store, the copy
  builds made before 2026-12-07 (through xarray: decode, re-chunk, re-encode with
  ``write_zarr``), timed apart and left out of the build's times. Target: csmask /
  scl <= 3.
* ``--baseline REV``: ``csmask.py`` of git revision ``REV`` beside this tree's: the
  masks of both on the 512 px unit (all real, and with a halo without data as in the
  builds) must be identical; ``by_date``'s CPU time per date of both, interleaved,
  with the network and with the network call replaced by its cached output (the code
  around it alone); and a ``csmask`` build with the revision's learned mask among the
  interleaved builds.
* ``--memory``: peak RSS (VmHWM) of fresh processes building with ``scl`` and with
  ``csmask`` at each ``--sizes`` (default 512 and 1024 px: 1 and 4 loading units);
  memory must not grow with the area. (Before 2026-12-07 08:45 UTC this was the
  child's ``ru_maxrss``, which Linux carries over ``exec``: those figures were at
  least the benchmark process's own RSS, 1.2-1.4 GiB with its model sessions.)

Usage: ``nice -n 5 python benchmarks/bench_cloudmask.py [--repeats 5] [--memory]
[--baseline REV]``
(from the repository root).
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_cube import END, START, _catalog, _place  # noqa: E402

from latentcube.cube.csmask import CSMask  # noqa: E402

MASKS: dict[str, object] = {
    "scl": "scl",
    "csmask": "csmask",
    "csmask 1 call": CSMask(calls=1),
    "csmask 2 thr": CSMask(threads=2, calls=1),
    "scl+csmask": "scl+csmask",
}
BASELINE = "csmask@base"  # the label of the csmask build with --baseline's learned mask


def _real_unit(side: int, dates: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """(dates, 6, side, side) reflectance: the real patch's first clear-ish dates, mirrored."""
    from stac_catalog import FLANDERS, PATCH, S2_10M, read_source, up2

    from conftest import SHARED

    src = read_source(SHARED / FLANDERS / PATCH)
    bands = ("B02", "B03", "B04", "B08", "B11", "B12")
    out = []
    for d in list(src.s2_dn)[:dates]:
        dn = src.s2_dn[d]
        img = np.stack([dn[b] if b in S2_10M else up2(dn[b]) for b in bands]).astype(np.float32)
        reps = -(-side // img.shape[-1])
        row = np.concatenate([img, img[:, :, ::-1]] * reps, axis=2)[:, :, :side]
        out.append(np.concatenate([row, row[:, ::-1]] * reps, axis=1)[:, :side] / 1e4)
    return np.clip(np.stack(out), 0, 1).astype(np.float32), bands


def _time_mask(mask: CSMask, side: int, dates: int, repeats: int) -> tuple[float, float, float]:
    """Best and median wall ms and median CPU ms per date of ``mask.by_date`` on a unit of
    ``side`` px plus halo."""
    refl, bands = _real_unit(side + 2 * mask.halo, dates)
    scl = np.zeros(refl[:, 0].shape, np.uint8)
    groups = [[k] for k in range(dates)]
    mask.by_date(refl, scl, bands, groups)  # warm: the session is loaded once per process
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        mask.by_date(refl, scl, bands, groups)
        times.append((time.perf_counter() - t) / dates * 1e3)
        cpu.append((time.process_time() - c) / dates * 1e3)
    return min(times), float(np.median(times)), float(np.median(cpu))


def _time_network(repeats: int) -> float:
    """Median CPU ms of one network call on a prepared 256 px tile (6 bands, 1 thread)."""
    from latentcube.cube.csmask import _model_input, _session

    mask = CSMask(threads=1)
    refl, _ = _real_unit(512 + 2 * mask.halo, 1)
    mean, std, tile, _ = mask._stats()
    pad = tile - -(-refl.shape[-1] // mask.scale)  # 642 px at 30 m: 214 model px
    x, _ = _model_input(list(refl[0]), mask.scale, mean, std, pad, pad)
    session = _session(str(mask.model_file), 1)
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x[None])}
    session.run(None, feed)
    cpu = []
    for _ in range(repeats):
        c = time.process_time()
        session.run(None, feed)
        cpu.append((time.process_time() - c) * 1e3)
    return float(np.median(cpu))


def _baseline(rev: str) -> Any:
    """``src/latentcube/cube/csmask.py`` of git revision ``rev``, imported as its own module."""
    import importlib.util

    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:src/latentcube/cube/csmask.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp(prefix="csmask-baseline-")) / "csmask_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("csmask_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["csmask_baseline"] = module  # for its dataclasses
    spec.loader.exec_module(module)
    return module


class _Cached:
    """An onnxruntime session whose ``run`` returns a cached output: the code around it alone."""

    def __init__(self, session: Any) -> None:
        self.session, self.out = session, None

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.out is None:
            self.out = self.session.run(names, feed)[0]
        return [self.out.copy()]


def _compare(old: Any, rev: str, repeats: int) -> None:
    """The learned mask of this tree against ``old`` (revision ``rev``): masks and CPU time."""
    from latentcube.cube import csmask as csmask_module

    now, base = CSMask(), old.CSMask()
    refl, bands = _real_unit(512 + 2 * now.halo, 4)
    ring = refl.copy()  # as in the builds: the catalog covers the unit, not its halo
    ring[..., : now.halo, :] = ring[..., -now.halo :, :] = np.nan
    ring[..., : now.halo] = ring[..., -now.halo :] = np.nan
    scl = np.zeros(refl[:, 0].shape, np.uint8)
    singles, pair = [[k] for k in range(4)], [[0, 1], [2], [3]]
    same = all(
        np.array_equal(now.classify(r, bands), base.classify(r, bands))
        and np.array_equal(now.by_date(r, scl, bands, g), base.by_date(r, scl, bands, g))
        for r in (refl, ring)
        for g in (singles, pair)
    )
    print(f"this tree against {rev}: identical classes and masks on the 512 px unit: {same}")
    sessions = {mod: mod._session for mod in (csmask_module, old)}
    for label in ("with the network", "the network call's output cached"):
        if label != "with the network":
            for mod, real in sessions.items():
                cached: dict[tuple[str, int], _Cached] = {}

                def session(p: str, t: int, real: Any = real, c: dict = cached) -> _Cached:
                    return c.setdefault((p, t), _Cached(real(p, t)))

                mod._session = session
        cpu: dict[str, list[float]] = {rev: [], "this tree": []}
        for _ in range(max(repeats, 5)):
            for key, mask in ((rev, base), ("this tree", now)):
                c = time.process_time()
                mask.by_date(ring, scl, bands, singles)
                cpu[key].append((time.process_time() - c) / 4 * 1e3)
        a, b = np.array(cpu[rev]), np.array(cpu["this tree"])
        print(f"  by_date CPU per date, {label}: {rev} {np.median(a):5.1f} ms, this tree "
              f"{np.median(b):5.1f} ms; ratio {np.median(b / a):.2f}")  # fmt: skip
    for mod, real in sessions.items():
        mod._session = real


def _builds(work: Path, repeats: int, old: Any = None) -> None:
    import shutil

    import latentcube.cube.build as build_module
    from latentcube.cube import csmask as csmask_module
    from latentcube.cube.build import build_cube

    cat = _catalog(work, 8)
    # the learned mask's wall time, the date copy's CPU time, the former copy's CPU time
    spent = [0.0, 0.0, 0.0]
    real, real_drop = csmask_module.CSMask.by_date, build_module.drop_dates
    classify = csmask_module.CSMask.classify
    impl = [real]  # by_date of this tree, or of --baseline's csmask.py

    def timed(self, *a, **k):  # the learned mask's own time inside the builds
        t = time.perf_counter()
        try:
            return impl[0](self, *a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    def copy(src: Path, dst: Path, keep: Any, attrs: Any) -> None:
        # the copy of the kept dates when a date is dropped after reading; first the
        # former copy of the same store, timed apart
        c = time.process_time()
        _xarray_copy(src, keep, work / "former-copy.zarr")
        spent[2] += time.process_time() - c
        c = time.process_time()
        try:
            real_drop(src, dst, keep, attrs)
        finally:
            spent[1] += time.process_time() - c

    csmask_module.CSMask.by_date = timed  # type: ignore[method-assign]
    build_module.drop_dates = copy  # type: ignore[assignment]

    masks = dict(MASKS)
    if old is not None:
        masks[BASELINE] = "csmask"

    def build(label: str) -> tuple[float, float, int, float, float, float]:
        out = work / "cube.zarr"
        shutil.rmtree(out, ignore_errors=True)
        spent[:] = [0.0, 0.0, 0.0]
        base = label == BASELINE  # the revision's by_date, and its classify that it calls
        impl[0] = old.CSMask.by_date if base else real
        csmask_module.CSMask.classify = old.CSMask.classify if base else classify  # type: ignore[method-assign]
        t, cpu = time.perf_counter(), time.process_time()
        c = build_cube(**_place(8), start=START, end=END, catalog=str(cat), out=out,
                       progress=False, mask=masks[label])  # fmt: skip
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        csmask_module.CSMask.classify = classify  # type: ignore[method-assign]
        wall -= spent[2]  # the former copy ran single-threaded: wall time about its CPU time
        return wall, spent[0], c.sizes["time"], cpu - spent[2], spent[1], spent[2]

    for label in masks:  # warm-up: files, model sessions
        build(label)
    rows: dict[str, list[tuple[float, float, int, float, float, float]]] = {m: [] for m in masks}
    for _ in range(repeats):
        for label in masks:
            rows[label].append(build(label))
    scl = np.array([r[0] for r in rows["scl"]])
    scl_cpu = np.array([r[3] for r in rows["scl"]])
    print(f"builds: 512 x 512 px, S2 + S1, local catalog, {repeats} interleaved rounds (warm)")
    for m in masks:
        wall = np.array([r[0] for r in rows[m]])
        cpu = np.array([r[3] for r in rows[m]])
        mask_s = np.array([r[1] for r in rows[m]])
        copy_s = np.array([r[4] for r in rows[m]])
        former_s = np.array([r[5] for r in rows[m]])
        if m == "scl":
            n = rows[m][0][2]
            print(f"  (scl build per date: wall {1e3 * np.median(wall) / n:.0f} ms, "
                  f"CPU {1e3 * np.median(cpu) / n:.0f} ms)")  # fmt: skip
        print(
            f"  {m:<12} {rows[m][0][2]} dates: wall median {1e3 * np.median(wall):6.0f} ms "
            f"(best {1e3 * wall.min():6.0f}), CPU {1e3 * np.median(cpu):6.0f} ms, learned mask "
            f"{1e3 * np.median(mask_s):5.0f} ms, date copy CPU {1e3 * np.median(copy_s):4.0f} ms; "
            f"ratio to scl: wall {np.median(wall / scl):.2f}x, CPU {np.median(cpu / scl_cpu):.2f}x"
        )
        if copy_s.any():
            print(
                f"  {'':<12} CPU without the date copy: "
                f"{np.median((cpu - copy_s) / scl_cpu):.2f}x; "
                f"the former copy of the same store: CPU {1e3 * np.median(former_s):4.0f} ms "
                f"({np.median(former_s / copy_s):.1f}x this copy), with it the build would be "
                f"{np.median((cpu - copy_s + former_s) / scl_cpu):.2f}x"
            )


def _xarray_copy(src: Path, keep: Any, out: Path) -> None:
    """The copy of the kept dates that builds made before 2026-12-07 (through xarray)."""
    import warnings

    import xarray as xr

    from latentcube.cube.plan import CubeSpec
    from latentcube.cube.write import store_encoding
    from latentcube.io import write_zarr

    st = xr.open_zarr(src, decode_coords="all", consolidated=False, chunks={})
    ds = st.isel(time=keep)
    for v in ds.variables.values():
        v.encoding = {}
    enc = store_encoding(ds, CubeSpec())
    ds = ds.chunk({d: enc["s2"]["chunks"][i] for i, d in enumerate(ds["s2"].dims)})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        write_zarr(ds, out, overwrite=True, encoding=enc)


def _memory_child(args: argparse.Namespace) -> None:
    from latentcube.cube.build import build_cube

    work = Path(args.child_work)
    cat = _catalog(work, args.child_repeat)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        build_cube(**_place(args.child_repeat), start=START, end=END, catalog=str(cat),
                   out=Path(tmp) / "c.zarr", progress=False, mask=args.child_mask)  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}))


def _peak_mib() -> float:
    """Peak RSS of this process (MiB): VmHWM where there is /proc.

    Linux carries ``ru_maxrss`` over ``exec``: a child started by a large parent
    reports at least the parent's RSS. VmHWM belongs to the process's own memory.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--baseline", metavar="REV", help="compare with csmask.py of this revision")
    ap.add_argument("--child-work", help=argparse.SUPPRESS)
    ap.add_argument("--child-repeat", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-mask", default="csmask", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_work:
        _memory_child(args)
        return
    import onnxruntime

    print(f"machine: {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    base = CSMask()
    print(f"mask: {base.describe()}")
    print(f"learned mask per 512 x 512 px date (+ {base.halo} px context), {args.repeats} calls, "
          "wall and CPU per date:")  # fmt: skip
    for label, mask, dates in [
        ("30 m, 1 thread, 1 date", base, 1),
        ("30 m, 4 dates on 2 calls at once (build default)", base, 4),
        ("30 m, 4 dates, one call at a time", CSMask(calls=1), 4),
        ("30 m, 2 threads, 1 date", CSMask(threads=2), 1),
        ("30 m, 4 dates, batches of 4 tiles, 1 call", CSMask(batch_size=4, calls=1), 4),
        ("10 m (scale 1), 1 thread, 1 date", CSMask(scale=1), 1),
    ]:
        best, med, cpu = _time_mask(mask, 512, dates, args.repeats)
        print(f"  {label:<48} best {best:5.0f} ms, median {med:5.0f} ms, CPU {cpu:5.0f} ms")
    net = _time_network(max(args.repeats, 5))
    print(f"  {'network call alone, 1 thread (one 256 px tile)':<48} CPU {net:5.0f} ms")
    old = _baseline(args.baseline) if args.baseline else None
    if old is not None:
        _compare(old, args.baseline, args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-cloudmask-") as tmp:
        _builds(Path(tmp), args.repeats, old)
        if args.memory:
            print("peak RSS (VmHWM) of a build in a fresh process:")
            for size in args.sizes:
                repeat = size // 64
                _catalog(Path(tmp), repeat)
                for mask in ("scl", "csmask"):
                    res = subprocess.run(
                        [sys.executable, __file__, "--child-work", tmp, "--child-repeat",
                         str(repeat), "--child-mask", mask],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    doc = json.loads(res.stdout.strip().splitlines()[-1])
                    secs, peak = doc["seconds"], doc["peak_mib"]
                    print(f"  {size} x {size} px, {mask:<6}: {secs:.1f} s, peak {peak:.0f} MiB")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

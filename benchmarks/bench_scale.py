"""Wall time and peak memory of large-area embedding (``embed_to_zarr``) for growing areas.

For each side length a synthetic cube (11 dates x 10 bands, stored as a chunked Zarr
store written lazily with Dask) is embedded by a random `fast` model in a fresh
subprocess with a local Dask cluster of two single-threaded worker processes (the
default of ``embed_to_zarr``). Prints wall time (cluster start-up and embedding),
pixel-dates per second, the peak RSS of each worker process and of the driver, the
fitted exponent of time vs area, and one chunking against another (same output).
Usage: ``python benchmarks/bench_scale.py [--sides 256 512 1024] [--chunk 128]``.
``--fused`` embeds an S2 + S1 cube with a fused bundle of two random ``fast``
autoencoders instead (the same engine, :class:`latentcube.inference.fusion.FusionJob`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import dask.array as da, numpy as np, pandas as pd, torch, xarray as xr
    from latentcube.bundle import ModelBundle
    from latentcube.inference import embed_to_zarr
    from latentcube.io import write_zarr
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig
    from latentcube.sensors import S2_BANDS

    side, chunk, variant, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    fused = sys.argv[7] == "fused"
    if __name__ == "__main__":
        torch.manual_seed(0)
        if fused:
            from latentcube.models.fusion import FusionConfig, FusionModel
            aes = {s: build_autoencoder(AutoencoderConfig.preset(variant, s)) for s in ("s2", "s1")}
            model = FusionModel(FusionConfig.for_autoencoders(aes), aes)
            ckpt = ModelBundle(model).save(f"{root}/fused.pt")
        else:
            ae = build_autoencoder(AutoencoderConfig.preset(variant))
            ckpt = ModelBundle(ae).save(f"{root}/m.pt")
        t = pd.date_range("2021-04-01", periods=11, freq="5D").values
        rs = da.random.RandomState(0)
        s2 = rs.uniform(0.02, 0.4, (11, 10, side, side), chunks=(11, 10, 512, 512))
        s2 = s2.astype("float32")
        valid = rs.uniform(0, 1, (11, side, side), chunks=(11, 512, 512)) > 0.1
        cube = xr.Dataset(
            {"s2": (("time", "band", "y", "x"), da.where(valid[:, None], s2, np.nan)),
             "s2_valid": (("time", "y", "x"), valid)},
            coords={"time": t, "band": list(S2_BANDS), "y": 5600005.0 - 10 * np.arange(side),
                    "x": 500005.0 + 10 * np.arange(side)},
        ).rio.write_crs("EPSG:32631")
        # store chunks no larger than the smallest area, so every size reads whole chunks
        cs = int(sys.argv[6])
        enc = {"s2": {"chunks": (11, 10, cs, cs)}, "s2_valid": {"chunks": (11, cs, cs)}}
        if fused:  # S1 on every date, matched on the day
            s1 = rs.uniform(0.2, 0.8, (11, 2, side, side), chunks=(11, 2, 512, 512))
            s1v = rs.uniform(0, 1, (11, side, side), chunks=(11, 512, 512)) > 0.05
            cube["s1"] = (("time", "s1_band", "y", "x"), da.where(s1v[:, None], s1, np.nan)
                          .astype("float32"))
            cube["s1_valid"] = (("time", "y", "x"), s1v)
            cube = cube.assign_coords(s1_band=["VV", "VH"], s1_time=("time", t))
            enc.update(s1={"chunks": (11, 2, cs, cs)}, s1_valid={"chunks": (11, cs, cs)})
        src = f"{root}/cube_{side}{'_fused' if fused else ''}.zarr"
        if not Path(src).exists():
            write_zarr(cube, src, encoding=enc)
        if sys.argv[5] == "make":
            sys.exit(0)
        from dask.distributed import Client, LocalCluster

        def peak_rss():  # KiB; VmHWM, as ru_maxrss carries a parent's (the nanny's) peak
            with open("/proc/self/status") as f:
                return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))

        base = peak_rss()
        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        worker_base = max(client.run(peak_rss).values())
        t1 = time.perf_counter()
        out = embed_to_zarr(src, ckpt, f"{root}/emb_{side}_{chunk}_{sys.argv[7]}.zarr", chunk=chunk,
                            scheduler=cluster.scheduler_address, progress=False)
        t2 = time.perf_counter()
        worker_peak = max(client.run(peak_rss).values())
        client.close()
        cluster.close()
        peak = peak_rss()
        print(json.dumps({"side": side, "chunk": chunk, "wall": t2 - t0, "embed": t2 - t1,
                          "startup": t1 - t0, "peak_mib": peak / 1024,
                          "before_mib": base / 1024, "worker_peak_mib": worker_peak / 1024,
                          "worker_start_mib": worker_base / 1024, "pixel_dates": side * side,
                          "out": str(out)}))
    """
)


def run(side: int, chunk: int, variant: str, root: str, store_chunk: int, kind: str) -> dict:
    script = Path(root) / "child.py"
    script.write_text(CHILD)
    # the cube is made in one process and embedded in a fresh one, so the peak RSS
    # measured is that of the embedding alone
    for step in ("make", "embed"):
        out = subprocess.run(
            [
                sys.executable,
                str(script),
                str(side),
                str(chunk),
                variant,
                root,
                step,
                str(store_chunk),
                kind,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--variant", default="fast")
    ap.add_argument("--fused", action="store_true", help="a fused S2 + S1 bundle")
    ap.add_argument("--skip-chunking", action="store_true", help="no second chunking")
    args = ap.parse_args()
    kind = "fused" if args.fused else "single"
    rows = []
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as root:
        for side in args.sides:
            r = run(side, args.chunk, args.variant, root, min(args.sides), kind)
            rows.append(r)
            print(
                f"{kind:>6} {side:5d}^2 px x 1 centre date (11 dates): wall {r['wall']:7.1f} s "
                f"(cluster start-up {r['startup']:.1f} s, embedding {r['embed']:.1f} s), "
                f"{r['pixel_dates'] / r['embed']:7.0f} pixel-dates/s, peak RSS per worker "
                f"{r['worker_peak_mib']:5.0f} MiB (at start {r['worker_start_mib']:.0f}), "
                f"driver {r['peak_mib']:5.0f} MiB (after imports {r['before_mib']:.0f})"
            )
            if args.fused:  # the single-sensor model on the same area, in the same run
                one = run(side, args.chunk, args.variant, root, min(args.sides), "single")
                print(
                    f"single {side:5d}^2 px: embedding {one['embed']:.1f} s, "
                    f"{one['pixel_dates'] / one['embed']:7.0f} pixel-dates/s, peak RSS per "
                    f"worker {one['worker_peak_mib']:5.0f} MiB; fused/single time "
                    f"{r['embed'] / one['embed']:.2f}"
                )
        area = np.array([r["side"] ** 2 for r in rows], float)
        for what in ("embed", "wall"):
            t = np.array([r[what] for r in rows])
            slope = np.polyfit(np.log(area), np.log(t), 1)[0]
            print(f"{what:>5} time ~ area^{slope:.2f} (least squares over all sides)")
        for what in ("worker_peak_mib", "peak_mib"):
            peaks = np.array([r[what] for r in rows])
            print(
                f"{'worker' if what.startswith('worker') else 'driver'} peak RSS from "
                f"{peaks.min():.0f} to {peaks.max():.0f} MiB: max/min "
                f"{peaks.max() / peaks.min():.2f} for {area.max() / area.min():.0f}x the area"
            )
        side = args.sides[min(1, len(args.sides) - 1)]
        if args.skip_chunking:
            print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
            return
        other = run(side, 100, args.variant, root, min(args.sides), kind)
        import xarray as xr

        a = xr.open_zarr(rows[min(1, len(rows) - 1)]["out"], consolidated=False)["embedding"].values
        b = xr.open_zarr(other["out"], consolidated=False)["embedding"].values
        same = np.array_equal(np.isnan(a), np.isnan(b)) and np.nanmax(np.abs(a - b)) <= 1e-6
        print(
            f"chunk {args.chunk} vs chunk 100 on {side}^2 px: max |diff| "
            f"{np.nanmax(np.abs(a - b)):.1e}, identical within 1e-6: {same}"
        )
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""Training on a device: samples/s with the streaming loader, data wait, memory, equality.

Measures, in one run on this machine:

1. **Training throughput**: the ``fast`` S2 autoencoder trained by the library's loop
   (:func:`latentcube.training.fit`) on windows streamed from copies of the bundled
   sample cube (:class:`~latentcube.data.streaming.StreamingWindows`), for each
   precision the device runs (``32``, ``bf16``; ``16-mixed`` on CUDA) with and
   without ``DataLoader`` workers: training samples/s (steps x batch over the
   seconds of the training steps, validation excluded), the fraction of that time
   the loop waited for data (``data_wait`` in ``metrics.csv``), and peak GPU memory
   (``torch.cuda.max_memory_allocated``; on a CPU, the peak RSS of the process);
2. **CPU-vs-device equality** of a forward pass: the same seeded model and batch on
   the CPU (float32) and on the device (float32 with TF32 off, then bf16 autocast):
   the largest absolute difference of the latents and reconstructions;
3. **Embedding** on the device: printed by ``benchmarks/_gpu_embed.py`` (``run(args)
   -> list[str]``) when that module is present.

Without a CUDA GPU it says so ("no CUDA GPU: GPU figures not measured") and still
prints the CPU figures. Nothing is downloaded: the cubes are copies of the sample
cube made by ``bench_streaming.make_cubes``.

    PYTHONPATH=src python benchmarks/bench_gpu.py --device auto --seconds 180 \\
        --out gpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_rss_mib
from bench_streaming import STRIDES, make_cubes


def machine(device: Any) -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu_cores": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1
        )
    return info


def splits(paths: list[Path], val_windows: int) -> tuple[Any, Any]:
    """Training windows of all but the last cube, validation windows of the last (capped)."""
    from latentcube.data.streaming import StreamingWindows

    tr = StreamingWindows(paths[:-1], mode="train", **STRIDES)
    va = StreamingWindows(paths[-1:], mode="consecutive", max_windows=val_windows, **STRIDES)
    return tr, va


def train_run(
    tr: Any,
    va: Any,
    device: Any,
    precision: str,
    workers: int,
    batch: int,
    seconds: float,
    out: Path,
) -> dict[str, Any]:
    """One budgeted training run through the loop; figures from its ``metrics.csv``."""
    import torch

    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import AutoencoderTask, TrainConfig, fit

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = TrainConfig(
        lr=1e-3, warmup_steps=50, batch_size=batch, val_batch_size=512, max_epochs=1000,
        max_seconds=seconds, early_stopping_patience=1000, seed=0,
    )  # fmt: skip
    task = AutoencoderTask(AutoencoderConfig.preset("fast", "s2"), tr, va)
    res = fit(task, cfg, out, device=device, precision=precision, workers=workers,
              progress=False, overwrite=True)  # fmt: skip
    with res.metrics_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    train_s = sum(float(r["train_seconds"]) for r in rows)
    data_s = sum(float(r["data_seconds"]) for r in rows)
    samples = min(res.steps * batch, len(tr) * len(rows))
    fig: dict[str, Any] = {
        "precision": precision,
        "workers": workers,
        "batch": batch,
        "steps": res.steps,
        "epochs": len(rows),
        "samples_per_s": round(samples / max(train_s, 1e-9), 1),
        "data_wait": round(data_s / max(train_s, 1e-9), 4),
        "val_centre_mae": round(res.best_val, 4),
    }
    if device.type == "cuda":
        fig["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        fig["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return fig


def forward_equality(tr: Any, device: Any, batch: int) -> dict[str, Any]:
    """The largest differences of one forward pass: CPU float32 vs the device."""
    import numpy as np
    import torch

    from latentcube.devices import autocast
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig

    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("fast", "s2")).eval()
    idx = np.arange(min(batch, len(tr)))
    x, m, g = (torch.from_numpy(a) for a in tr.batch(idx))
    with torch.no_grad():
        r_cpu, z_cpu = model(x, m, g)
    out: dict[str, Any] = {"windows": len(idx)}
    targets: list[tuple[str, Any, str]] = [("cpu_bf16", torch.device("cpu"), "bf16")]
    if device.type != "cpu":
        targets = [(f"{device.type}_fp32", device, "32"), (f"{device.type}_bf16", device, "bf16")]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        on = model.to(device) if device.type != "cpu" else model
        xd, md, gd = (t.to(device) for t in (x, m, g))
        for name, dev, precision in targets:
            with torch.no_grad(), autocast(dev, precision):
                r, z = on(xd, md, gd)
            out[name] = {
                "latent_max_abs": float((z.float().cpu() - z_cpu).abs().max()),
                "recon_max_abs": float((r.float().cpu() - r_cpu).abs().max()),
                "latent_scale": float(z_cpu.abs().max()),
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.to("cpu")
    return out


def embed_section(args: argparse.Namespace) -> list[str]:
    """The lines of ``benchmarks/_gpu_embed.py`` (``run(args)``), if it is present."""
    try:
        import _gpu_embed  # type: ignore[import-not-found]
    except ImportError:
        return ["embedding section not available"]
    return list(_gpu_embed.run(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seconds", type=float, default=180.0, help="training time, all runs")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--cubes", type=int, default=8, help="copies of the sample cube")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 64 else")
    parser.add_argument("--workers", type=int, default=None, help="default: min(6, cores - 2)")
    parser.add_argument("--work", type=Path, default=None, help="folder for cubes and runs")
    args = parser.parse_args()

    from latentcube.devices import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        raise SystemExit(f"error: {err}") from None
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 64)
    workers = (
        args.workers if args.workers is not None else max(1, min(6, (os.cpu_count() or 2) - 2))
    )
    precisions = ["32", "bf16", *(["16-mixed"] if cuda else [])]
    plan = [("32", 0), *((p, workers) for p in precisions)]
    report: dict[str, Any] = {"machine": machine(device), "gpu_measured": cuda}
    print(f"machine: {json.dumps(report['machine'])}")
    if not cuda:
        print("no CUDA GPU: GPU figures not measured (CPU figures below)")

    work = args.work or Path(tempfile.mkdtemp(prefix="latentcube-bench-gpu-"))
    t0 = time.perf_counter()
    paths = make_cubes(work, args.cubes)
    tr, va = splits(paths, val_windows=512)
    print(f"{len(paths)} cubes ({len(tr)} training, {len(va)} validation windows) in "
          f"{time.perf_counter() - t0:.1f} s; batch {batch}, {args.seconds:.0f} s of training "
          f"over {len(plan)} runs")  # fmt: skip

    runs = []
    for precision, w in plan:
        fig = train_run(tr, va, device, precision, w, batch, args.seconds / len(plan),
                        work / f"run-{precision}-{w}")  # fmt: skip
        runs.append(fig)
        if cuda:
            mem = f"GPU peak {fig['gpu_peak_mib']:.0f} MiB"
        else:
            mem = f"peak RSS {fig['peak_rss_mib']:.0f} MiB (GPU memory not measured)"
        print(f"train {device.type} precision {precision:>8}, {w} workers: "
              f"{fig['samples_per_s']:.0f} samples/s, data wait {100 * fig['data_wait']:.1f}%, "
              f"{fig['steps']} steps, {mem}")  # fmt: skip
    report["train"] = runs
    base = runs[0]["samples_per_s"]
    for fig in runs[1:]:
        print(f"  ratio precision {fig['precision']}, {fig['workers']} workers / "
              f"precision 32, 0 workers: {fig['samples_per_s'] / base:.2f}x")  # fmt: skip

    eq = forward_equality(tr, device, min(batch, 256))
    report["forward_equality"] = eq
    for name, d in eq.items():
        if isinstance(d, dict):
            print(f"forward CPU fp32 vs {name}: max |latent diff| {d['latent_max_abs']:.2e} "
                  f"(latent scale {d['latent_scale']:.2f}), max |recon diff| "
                  f"{d['recon_max_abs']:.2e}")  # fmt: skip
    if not cuda:
        print("forward CPU vs GPU: not measured (no CUDA GPU)")

    lines = embed_section(args)
    report["embedding"] = lines
    for line in lines:
        print(line)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Cost of the stage-1 model configurations, measured in one run.

For each configuration (S2, 10 bands): parameters; multiply-accumulates per window
counted with ``torch.utils.flop_counter`` (forward, and a whole training step with
backward and the loss); training samples/s and inference windows/s on this machine; the
same rates as a fraction of the machine's measured fp32 matmul rate; and, for the
dense models, pixel-dates/s of dense embedding. Also the speed of window extraction
(index generation) and batch materialisation on a real cube.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_models.py [--threads 2]

The machine is shared: the load average is printed before and after; rates are
medians of repeated timings (wall clock) and are comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latentcube.models.autoencoder import build_autoencoder, count_parameters
from latentcube.models.config import AutoencoderConfig
from latentcube.models.losses import ContextLoss

ROOT = Path(__file__).resolve().parents[1]
FLANDERS = ROOT.parent / "shared" / "data" / "worldcereal_s1_s2_training_patches_flanders"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median (CPU seconds of this process, wall seconds) of ``fn`` after one warm-up run.

    CPU time counts every thread of the process; on a shared machine it is the stable
    measure of cost (wall time grows with other users' load).
    """
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return statistics.median(cpu), statistics.median(wall)


def matmul_rate(n: int = 1024, repeats: int = 9) -> tuple[float, float]:
    """Measured fp32 matmul FLOP per CPU-second and per wall second (2 n^3 per product)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    cpu, wall = timed(lambda: a @ b, repeats)
    return 2 * n**3 / cpu, 2 * n**3 / wall


def batch(cfg: AutoencoderConfig, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, cfg.n_dates, cfg.n_bands, cfg.window, cfg.window, generator=g)
    m = torch.rand(b, cfg.n_dates, cfg.window, cfg.window, generator=g) > 0.1
    gaps = torch.randint(2, 12, (b, cfg.n_dates - 1), generator=g)
    return x, m, gaps


def bench_one(
    variant: str, b_train: int, b_inf: int, reps: int, peak: float, loss_fn: ContextLoss
) -> float:
    """Measure one configuration, print its row and return its training samples/CPU-s."""
    cfg = AutoencoderConfig.preset(variant, "s2")
    model = build_autoencoder(cfg)
    params = count_parameters(model)
    x1, m1, g1 = batch(cfg, 1)
    model.train()  # the fused inference path of nn.TransformerEncoderLayer is not counted
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.encode(x1, m1, g1)
    enc_macs = fc.get_total_flops() / 2
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x1, m1, g1)
    fwd_macs = fc.get_total_flops() / 2
    xb, mb, gb = batch(cfg, b_train)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        recon, _ = model(xb, mb, gb)
        loss, _ = loss_fn(recon, xb, mb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        step()
    train_macs = fc.get_total_flops() / 2 / b_train
    t_train, w_train = timed(step, reps)
    train_rate = b_train / t_train
    model.eval()
    xi, mi, gi = batch(cfg, b_inf)

    def infer() -> None:
        with torch.no_grad():
            model.encode(xi, mi, gi)

    t_inf, w_inf = timed(infer, reps)
    inf_rate = b_inf / t_inf
    dense = ""
    if model.supports_dense:
        tile = torch.rand(cfg.n_dates, cfg.n_bands, 78, 78)
        valid = torch.ones(cfg.n_dates, 78, 78, dtype=torch.bool)
        gaps = torch.full((1, cfg.n_dates - 1), 5)

        def dense_run() -> None:
            with torch.no_grad():
                f = model.frame_features(tile, valid)  # (T, F, 64, 64)
                feats = f.permute(2, 3, 0, 1).reshape(-1, cfg.n_dates, f.shape[1])
                model.encode_features(feats, gaps.expand(feats.shape[0], -1))

        t_d, w_d = timed(dense_run, reps)
        dense = f"{64 * 64 / t_d:>10.0f} ({64 * 64 / w_d:>7.0f})"
    print(
        f"{variant:<6} {params:>9,} {fwd_macs:>12.3g} {train_macs:>17.3g} "
        f"{train_rate:>12.2f} ({b_train / w_train:>8.2f}) "
        f"{100 * 2 * train_macs * train_rate / peak:>6.1f}% "
        f"{inf_rate:>10.1f} ({b_inf / w_inf:>7.1f}) "
        f"{100 * 2 * enc_macs * inf_rate / peak:>6.1f}% {dense}"
    )
    return train_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average before: {load()}"
    )
    peak, peak_wall = matmul_rate()
    print(
        f"fp32 matmul (1024 x 1024): {peak / 1e9:.1f} GFLOP per CPU-second "
        f"({peak_wall / 1e9:.1f} GFLOP/s wall under the current load)"
    )
    print("rates below: per CPU-second of this process (all threads); wall rates in brackets")
    print()
    hdr = (
        f"{'config':<6} {'params':>9} {'fwd MAC/win':>12} {'train MAC/sample':>17} "
        f"{'train samples/CPU-s':>24} {'% peak':>7} {'infer win/CPU-s':>20} {'% peak':>7} "
        f"{'dense px-dates/CPU-s':>22}"
    )
    print(hdr)
    rates = {}
    loss_fn = ContextLoss()
    for variant, b_train, b_inf, reps in (
        ("paper", 8, 16, 2),
        ("fast", 32, 256, 5),
        ("tiny", 32, 256, 5),
    ):
        rates[variant] = bench_one(variant, b_train, b_inf, reps, peak, loss_fn)
    print()
    print(
        f"fast / paper training samples per CPU-second: {rates['fast'] / rates['paper']:.1f}x "
        "(target >= 5x)"
    )
    print(
        "MACs counted by torch.utils.flop_counter: forward = encode + decode of one window; "
        "train = forward + backward + loss per sample; '% peak' = 2 * MACs * rate / matmul FLOP/s "
        "(inference counts the encoder only)."
    )

    # window extraction on a real cube
    patch = FLANDERS / "00002806639B424A"
    if patch.exists():
        from latentcube.cube.readers import open_cube
        from latentcube.data.windows import CubeArrays, extract_windows

        arr = CubeArrays.from_cube(open_cube(patch).load(), "s2")
        t_ext, _ = timed(lambda: extract_windows(arr, "s2", stride_t=1, stride_xy=1, seed=0), 3)
        w = extract_windows(arr, "s2", stride_t=1, stride_xy=1, seed=0)
        idx = np.random.default_rng(0).permutation(len(w))[:1024]
        t_b, _ = timed(lambda: w.batch(idx), 3)
        print()
        print(
            f"window extraction (real cube {arr.data.shape}, train mode, stride 1): "
            f"{len(w)} windows in {t_ext * 1e3:.0f} CPU-ms = {len(w) / t_ext:,.0f} windows/CPU-s"
        )
        print(
            f"batch materialisation (1024 random windows, 11 x 10 x 15 x 15 + mask + gaps): "
            f"{len(idx) / t_b:,.0f} windows/CPU-s"
        )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()

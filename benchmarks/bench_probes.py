"""Cost of the blocked-CV probes with one BLAS/OpenMP thread against the process default.

The crop-type and land-cover probes fit many small models (a logistic regression per
grid value, inner fold and outer fold; a k-NN query per inner and outer fold). This
script times :func:`latentcube.evaluation.probes.blocked_cv` on generated data of the
crop-type probe's shape (3604 pixels, 7 features x 17 dates = 119 series features, 7
classes, 29 spatial blocks) with ``threads=1`` (the default) and ``threads=None`` (the
process's thread pools as they are), in one run, after a torch workload on all cores
as the evaluation scripts run one (embedding) before probing. Each setting is timed
``--rounds`` times, alternating; the medians and their ratio are printed, and the
scores of the two settings are compared.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_probes.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info

from latentcube.evaluation.probes import blocked_cv


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def crop_type_like(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Season series of 7 features x 17 dates with class profiles, block offsets and noise."""
    rng = np.random.default_rng(seed)
    counts = [870, 1217, 72, 141, 86, 154, 1064]  # the crop-type probe's class sizes
    n_feat, n_dates, n_blocks = 7, 17, 29
    t = np.linspace(0, 1, n_dates)
    profiles = []
    for _ in counts:  # smooth class profiles: a seasonal peak of random timing and height
        peak, width, amp = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3), rng.normal(0, 1, n_feat)
        profiles.append(amp[:, None] * np.exp(-0.5 * ((t - peak) / width) ** 2))
    y = np.repeat(np.arange(len(counts)), counts)
    block = rng.integers(0, n_blocks, len(y))
    offset = rng.normal(0, 0.3, (n_blocks, n_feat, 1))
    mix = rng.normal(0, 1, (n_feat, n_feat)) / np.sqrt(n_feat)  # correlated features
    x = np.stack([profiles[c] for c in y]) + offset[block]
    x = np.einsum("ij,njt->nit", mix, x) + rng.normal(0, 0.8, x.shape)
    return {"series": x.reshape(len(y), -1)}, y, block


def torch_workload() -> None:
    """All-core torch matmuls, as an embedding run leaves its OpenMP pool behind."""
    torch.set_num_threads(os.cpu_count() or 1)
    a = torch.randn(1024, 1024)
    for _ in range(20):
        a = torch.tanh(a @ a / 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="fold assignments per blocked_cv")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    pools = [f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info()]
    print(f"thread pools before: {', '.join(pools)}")
    print(f"load average before: {load()}")
    features, y, groups = crop_type_like()
    print(f"data: {len(y)} samples, {features['series'].shape[1]} features, 7 classes, 29 blocks")
    times: dict[str, list[tuple[float, float]]] = {"1 thread": [], "process default": []}
    scores: dict[str, dict] = {}
    for _ in range(a.rounds):
        for name, threads in (("1 thread", 1), ("process default", None)):
            torch_workload()
            w, c = time.perf_counter(), time.process_time()
            scores[name] = blocked_cv(
                features, y, groups, seed=42, repeats=a.repeats, threads=threads
            )
            times[name].append((time.perf_counter() - w, time.process_time() - c))
            print(f"  {name:16s} wall {times[name][-1][0]:6.1f} s, CPU {times[name][-1][1]:6.1f} s")
    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for k, v in times.items()
    }
    for k, (w, c) in med.items():
        print(f"blocked_cv, {k:16s}: median wall {w:6.1f} s, CPU {c:6.1f} s")
    one, default = med["1 thread"], med["process default"]
    print(
        f"ratio process default / 1 thread: wall {default[0] / one[0]:.2f}x, "
        f"CPU {default[1] / one[1]:.2f}x"
    )
    for kind in ("logreg", "knn"):
        f1 = [scores[k]["series"][kind]["macro_f1"] for k in scores]
        print(
            f"macro-F1 {kind}: 1 thread {f1[0]:.6f}, process default {f1[1]:.6f}, "
            f"|diff| {abs(f1[0] - f1[1]):.1e}"
        )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()

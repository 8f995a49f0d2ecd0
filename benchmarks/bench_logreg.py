"""Cost of fitting the logistic-regression probe to convergence, and its solver choice.

The probes' logistic regression is fitted to a gradient tolerance of
:data:`latentcube.evaluation.probes.LOGREG_TOL` (1e-8), so its scores do not depend
on the CPU's vector kernels or on warm starts, as they did with scikit-learn's
default tolerance (1e-4). This script times
:func:`latentcube.evaluation.probes.blocked_cv` (logistic regression only, inner
search included, one fold assignment, one thread) in one run on generated data of
the two probes' shapes:

- crop type: 3604 pixels, 119 series features, 7 classes, 29 blocks;
- land cover: 39996 pixel-dates, 7 features, 6 unbalanced classes, 128 blocks;

with three settings: the earlier probe (L-BFGS, tolerance 1e-4), converged L-BFGS
and converged Newton-Cholesky. Each is timed ``--rounds`` times, alternating; the
medians, their ratios and the macro-F1 of each setting are printed. The converged
settings must agree with each other (one optimum); the earlier probe may not.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_logreg.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from bench_probes import crop_type_like, load

import latentcube.evaluation.probes as probes

#: setting -> (gradient tolerance, largest feature count solved by Newton-Cholesky)
SETTINGS = {
    "L-BFGS, tol 1e-4 (earlier)": (1e-4, 0),
    "L-BFGS, tol 1e-8": (1e-8, 0),
    "Newton-Cholesky, tol 1e-8": (1e-8, 10**9),
}


def land_cover_like(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Pixel-dates of 7 correlated features, 6 classes of the land-cover probe's sizes."""
    rng = np.random.default_rng(seed)
    counts = [903, 566, 8828, 29337, 322, 40]
    n_feat, n_blocks = 7, 128
    y = np.repeat(np.arange(len(counts)), counts)
    means = rng.normal(0, 0.7, (len(counts), n_feat))
    block = rng.integers(0, n_blocks, len(y))
    mix = rng.normal(0, 1, (n_feat, n_feat)) / np.sqrt(n_feat)
    offset = rng.normal(0, 0.4, (n_blocks, n_feat))
    x = (means[y] + offset[block] + rng.normal(size=(len(y), n_feat))) @ mix
    return {"pixel-date": x}, y, block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average before: {load()}")
    tol, newton = probes.LOGREG_TOL, probes.NEWTON_MAX_FEATURES
    for task, data in (("crop type", crop_type_like()), ("land cover", land_cover_like())):
        features, y, groups = data
        (name,) = features
        n_feat = features[name].shape[1]
        print(f"{task}: {len(y)} samples, {n_feat} features, {len(np.unique(y))} classes")
        times: dict[str, list[float]] = {k: [] for k in SETTINGS}
        f1: dict[str, float] = {}
        for _ in range(a.rounds):
            for setting, (tol_s, newton_s) in SETTINGS.items():
                probes.LOGREG_TOL, probes.NEWTON_MAX_FEATURES = tol_s, newton_s
                c = time.process_time()
                res = blocked_cv(features, y, groups, probes=("logreg",), seed=42)
                times[setting].append(time.process_time() - c)
                f1[setting] = res[name]["logreg"]["macro_f1"]
        probes.LOGREG_TOL, probes.NEWTON_MAX_FEATURES = tol, newton
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["L-BFGS, tol 1e-4 (earlier)"]
        for k, v in med.items():
            print(f"  {k:28s} median CPU {v:6.1f} s ({v / base:4.1f}x), macro-F1 {f1[k]:.6f}")
        lb, nt = med["L-BFGS, tol 1e-8"], med["Newton-Cholesky, tol 1e-8"]
        chosen = "Newton-Cholesky" if n_feat <= newton else "L-BFGS"
        print(
            f"  Newton-Cholesky / L-BFGS (converged): {nt / lb:.2f}x; the probe uses "
            f"{chosen} for {n_feat} features (NEWTON_MAX_FEATURES = {newton})"
        )
        gap = abs(f1["L-BFGS, tol 1e-8"] - f1["Newton-Cholesky, tol 1e-8"])
        print(f"  |macro-F1 L-BFGS - Newton-Cholesky| (converged): {gap:.1e}")
    print(f"load average after: {load()}")


blocked_cv = probes.blocked_cv

if __name__ == "__main__":
    main()

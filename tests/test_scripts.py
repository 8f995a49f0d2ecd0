"""Helpers of the scripts in scripts/ that the docs' numbers depend on."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_earlier_run_names_the_epoch_of_the_scored_checkpoint(tmp_path):
    """The run's length from its last row; the scored best.pt from its best epoch (the
    first of equal ones, as training keeps a new best only when it is lower)."""
    rows = [(1, 32, 0.3), (2, 64, 0.1), (3, 96, 0.1), (4, 128, 0.2)]
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "val_centre_mae"])
        w.writerows(rows)
    ckpt, row = _script("train_stage1").earlier_run(tmp_path)
    assert ckpt == tmp_path / "best.pt"
    assert (row["epoch"], row["step"]) == ("4", "128")
    assert (row["best_epoch"], row["best_step"], float(row["best_val"])) == ("2", "64", 0.1)

"""Report folders: markdown, figures and the JSON of every number."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from latentcube.evaluation.report import (
    plot_gpp_scatter,
    plot_gpp_series,
    plot_probe_scores,
    probe_table,
    write_report,
)

RESULT = {
    "classes": {"10": "Tree cover", "40": "Cropland"},
    "n_features": {"emb": 9},
    "scores": {
        "emb": {
            "logreg": {
                "macro_f1": 0.8125,
                "accuracy": 0.9,
                "per_class_f1": {"10": 0.75, "40": 0.875},
            },
            "knn": {"macro_f1": 0.5, "accuracy": 0.6, "per_class_f1": {"10": 0.5, "40": 0.5}},
        }
    },
}


def test_report_folder(tmp_path):
    figs = [
        plot_probe_scores(RESULT, tmp_path / "figures" / "p.png", "probe"),
        plot_gpp_series(
            pd.date_range("2018-01-01", periods=5).values,
            np.arange(5.0),
            {"m": np.arange(5.0) + 1},
            tmp_path / "figures" / "s.png",
            "series",
        ),
        plot_gpp_scatter(
            np.arange(5.0),
            {"m": np.arange(5.0) + 1, "n": np.arange(5.0)},
            tmp_path / "figures" / "sc.png",
            "scatter",
        ),
    ]
    md = write_report(
        tmp_path,
        "T",
        {"probe": RESULT, "x": np.float32(1.5)},
        [("Results", probe_table(RESULT))],
        figures=figs,
        command="cmd",
        seed=7,
    )
    text = md.read_text()
    assert "| emb | 9 | 0.812 | 0.500 | 0.75 | 0.88 |" in text
    assert "![p](figures/p.png)" in text and "Reproduce: `cmd` (seed 7)" in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["probe"] == RESULT and data["x"] == 1.5 and data["meta"]["seed"] == 7
    assert all(f.stat().st_size > 3000 for f in figs)
    env = data["meta"]["environment"]
    assert env["packages"]["numpy"] == np.__version__ and env["cpu"]


def test_probe_table_escapes_pipes():
    res = {**RESULT, "scores": {"a|b": RESULT["scores"]["emb"]}, "n_features": {"a|b": 2}}
    row = probe_table(res).splitlines()[2]
    assert row.startswith("| a\\|b | 2 |")


def test_probe_figure_error_bars_are_the_sd_over_fold_assignments():
    from matplotlib.container import ErrorbarContainer

    from latentcube.evaluation.report import probe_figure

    sd = {"logreg": 0.03, "knn": 0.07}
    rep = {
        **RESULT,
        "repeats": 4,
        "scores": {
            "emb": {p: {**v, "macro_f1_sd": sd[p]} for p, v in RESULT["scores"]["emb"].items()}
        },
    }
    ax = probe_figure(rep, "probe").axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    half = sorted(
        float(np.ptp(seg[:, 0])) / 2 for c in bars for seg in c.lines[2][0].get_segments()
    )
    assert half == pytest.approx(sorted(sd.values()))
    assert "4 fold assignments" in ax.get_xlabel()
    # a single run has no error bars and says nothing about repeats
    ax1 = probe_figure(RESULT, "probe").axes[0]
    assert not [c for c in ax1.containers if isinstance(c, ErrorbarContainer)]
    assert "fold assignments" not in ax1.get_xlabel()


def test_environment_reads_torch_only_when_loaded(monkeypatch):
    import sys

    import torch

    from latentcube.evaluation.report import environment as reexported
    from latentcube.provenance import environment

    assert reexported is environment

    env = environment()
    assert env["packages"]["torch"] == torch.__version__
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    monkeypatch.delitem(sys.modules, "torch")
    assert "torch_cpu_capability" not in environment()

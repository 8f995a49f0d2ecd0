"""The training loop: learning, metrics, early stopping, and resume after SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentcube.bundle import ModelBundle
from latentcube.data.windows import block_regions, extract_windows
from latentcube.errors import ModelError
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.training import AutoencoderTask, TrainConfig, fit, train_config_preset

from conftest import tiny_cube


def _data(seed=0):
    cube = tiny_cube(n_time=22, ny=40, nx=40, seed=seed)
    tr_r, va_r = block_regions((40, 40), 20, (0.75, 0.25), seed=0)
    tr = extract_windows(cube, "s2", region=tr_r, stride_t=3, stride_xy=2, seed=seed)
    va = extract_windows(cube, "s2", mode="consecutive", region=va_r, stride_t=3, stride_xy=3)
    return tr, va


def _rows(path: Path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_training_learns_and_writes_metrics(tmp_path):
    tr, va = _data()
    cfg = TrainConfig(
        lr=3e-3, warmup_steps=5, batch_size=16, max_epochs=6, seed=0, early_stopping_patience=50
    )
    res = fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va), cfg, tmp_path, progress=False
    )
    rows = _rows(res.metrics_csv)
    assert len(rows) == 6 and res.epochs == 6 and res.stopped == "max_epochs"
    val = [float(r["val_centre_mae"]) for r in rows]
    loss = [float(r["train_loss"]) for r in rows]
    assert min(val[1:]) < 0.85 * val[0] and loss[-1] < 0.7 * loss[0]
    meta = ModelBundle.load(
        res.checkpoint, expect_bands=AutoencoderConfig.preset("tiny").bands
    ).meta
    assert meta["metrics"]["best_val_centre_mae"] == pytest.approx(res.best_val)
    assert (tmp_path / "best.json").exists()


def test_early_stopping_and_time_budget(tmp_path):
    tr, va = _data()
    cfg = TrainConfig(
        lr=1e-9,
        warmup_steps=0,
        batch_size=64,
        max_epochs=50,
        early_stopping_patience=2,
        early_stopping_min_delta=1e-3,
        seed=0,
    )
    res = fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va),
        cfg,
        tmp_path / "a",
        progress=False,
    )
    assert res.stopped == "early_stopping" and res.epochs < 10
    cfg = cfg.model_copy(update={"max_seconds": 0.0, "lr": 1e-3})
    res = fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va),
        cfg,
        tmp_path / "b",
        progress=False,
    )
    assert res.stopped == "time_budget" and res.epochs == 1


def test_resume_refuses_another_configuration(tmp_path):
    tr, va = _data()
    cfg = TrainConfig(max_epochs=1, batch_size=64, warmup_steps=0)
    fit(AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va), cfg, tmp_path, progress=False)
    other = cfg.model_copy(update={"lr": 5e-3})
    with pytest.raises(ModelError, match="belongs to another model"):
        fit(
            AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va),
            other,
            tmp_path,
            progress=False,
        )
    fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va),
        other,
        tmp_path,
        resume=False,
        overwrite=True,
        progress=False,
    )
    # another loss is another run too; the checkpoint records the loss it was trained with
    loss = LossConfig(lambda_decorrelation=0.5)
    with pytest.raises(ModelError, match="belongs to another model"):
        fit(
            AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va, loss_config=loss),
            other,
            tmp_path,
            progress=False,
        )
    fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va, loss_config=loss),
        other,
        tmp_path / "l",
        progress=False,
    )
    meta = ModelBundle.load(tmp_path / "l" / "last.pt").meta
    assert LossConfig(**meta["loss_config"]) == loss
    meta = ModelBundle.load(tmp_path / "last.pt").meta
    assert LossConfig(**meta["loss_config"]) == LossConfig.for_sensor("s2")
    assert "loss_config" not in meta["identity"]  # the default loss: identities as before


def test_a_kill_after_last_pt_is_repaired_on_resume(tmp_path):
    """``last.pt`` is written first: a kill before ``best.pt`` and ``metrics.csv`` were
    replaced leaves a run whose rerun writes them from ``last.pt``."""
    tr, va = _data()
    cfg = TrainConfig(max_epochs=1, batch_size=64, warmup_steps=0)
    res = fit(AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va), cfg, tmp_path)
    best, rows = res.checkpoint.read_bytes(), _rows(res.metrics_csv)
    res.checkpoint.unlink()
    res.metrics_csv.write_text("epoch,step\n")
    again = fit(AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va), cfg, tmp_path)
    assert again.epochs == 1 and _rows(res.metrics_csv) == rows
    got, want = ModelBundle.load(res.checkpoint), ModelBundle.load(res.last)
    assert got.meta["metrics"] == want.meta["metrics"] and len(best) > 0
    for k, v in want.model.state_dict().items():
        assert torch.equal(got.model.state_dict()[k], v), k


def test_empty_windows_are_refused(tmp_path):
    tr, va = _data()
    with pytest.raises(ModelError, match="no training windows"):
        fit(
            AutoencoderTask(AutoencoderConfig.preset("tiny"), tr.subset(np.array([], int)), va),
            TrainConfig(),
            tmp_path,
            progress=False,
        )


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_training import _data
    from latentcube.models.config import AutoencoderConfig
    from latentcube.training import AutoencoderTask, TrainConfig, fit
    tr, va = _data()
    cfg = TrainConfig(lr=3e-3, warmup_steps=5, batch_size=16, max_epochs=5, seed=7,
                      early_stopping_patience=50, num_threads=1)
    task = AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va)
    res = fit(task, cfg, sys.argv[1], progress=False)
    print("DONE", res.best_val)
    """
)


@pytest.mark.slow
def test_sigkill_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ref")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "metrics.csv").exists() and len(_rows(out / "metrics.csv")) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_rows(out / "metrics.csv"))
    assert 2 <= done_before < 5, "the run must be killed part-way"
    again = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    a, b = _rows(tmp_path / "ref" / "metrics.csv"), _rows(out / "metrics.csv")
    assert len(a) == len(b) == 5
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "val_loss", "val_centre_mae", "step"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-6, abs=1e-9), (k, ra, rb)


def test_presets():
    assert train_config_preset("paper").lr == 1e-4
    assert train_config_preset("paper").warmup_steps == 30_000
    assert train_config_preset("quick").lr > 1e-4
    with pytest.raises(ValueError):
        train_config_preset("nope")


def test_gap_filling_hides_the_centre_from_the_input_but_not_the_loss(tmp_path, monkeypatch):
    import latentcube.training.stage1 as training
    from latentcube.models.autoencoder import build_autoencoder

    seen = []

    def recording(cfg):
        model = build_autoencoder(cfg)
        forward = model.forward

        def fwd(x, mask, gaps):
            if model.training:
                seen.append(mask[:, 5, 7, 7].clone())
            return forward(x, mask, gaps)

        model.forward = fwd
        return model

    monkeypatch.setattr(training, "build_autoencoder", recording)
    tr, va = _data()
    tr, va = tr.subset(np.arange(64)), va.subset(np.arange(min(len(va), 16)))
    cfg = TrainConfig(max_epochs=1, batch_size=32, warmup_steps=0, hide_centre_prob=1.0)
    res = fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va),
        cfg,
        tmp_path / "g",
        progress=False,
    )
    assert len(seen) == 2 and not torch.cat(seen).any()  # every centre hidden from the input
    row = _rows(res.metrics_csv)[0]
    assert float(row["train_center"]) > 0  # ... and still a target of the loss
    seen.clear()
    cfg = cfg.model_copy(update={"hide_centre_prob": 0.0})
    fit(
        AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va),
        cfg,
        tmp_path / "n",
        progress=False,
    )
    assert torch.cat(seen).all()  # off: the (valid) centres are visible


def test_decorrelation_weight_decorrelates_the_trained_latent(tmp_path):
    from latentcube.models.losses import latent_decorrelation

    tr, va = _data()
    cfg = TrainConfig(lr=3e-3, warmup_steps=5, batch_size=16, max_epochs=8, seed=0)
    x, m, g = (torch.from_numpy(a) for a in tr.batch(np.arange(len(tr))))
    scores = {}
    for lam in (0.0, 5.0):
        loss = LossConfig(lambda_decorrelation=lam)
        fit(
            AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va, loss_config=loss),
            cfg,
            tmp_path / str(lam),
            progress=False,
        )
        model = ModelBundle.load(tmp_path / str(lam) / "last.pt").model
        with torch.no_grad():
            scores[lam] = float(latent_decorrelation(model.encode(x, m, g)))
    assert scores[5.0] < 0.2 * scores[0.0], scores  # measured: 0.025 against 0.38
    # metrics.csv logs the term's training mean when it is on, and leaves it blank when off
    off = _rows(tmp_path / "0.0" / "metrics.csv")
    on = [float(r["train_decorrelation"]) for r in _rows(tmp_path / "5.0" / "metrics.csv")]
    assert all(r["train_decorrelation"] == "" for r in off)
    assert len(on) == 8 and on[-1] < 0.5 * on[0], on


def test_train_overrides_set_only_what_the_options_give():
    from latentcube.training import train_overrides

    assert train_overrides() == {}
    assert train_overrides(None, 30.0, 2) == {"max_cpu_seconds": 30.0, "max_epochs": 2}
    # both gap-filling probabilities are set when either is above 0, so a recipe's
    # other one does not stay beside it
    assert train_overrides(hide_prob=0.2) == {"hide_centre_prob": 0.0, "hide_prob": 0.2}
    config = train_config_preset("quick")
    merged = TrainConfig.model_validate({**config.model_dump(), **train_overrides(max_epochs=3)})
    assert merged.max_epochs == 3 and merged.max_seconds == config.max_seconds

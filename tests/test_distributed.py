"""Data-parallel training (DDP on gloo): two processes give the single-process result."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from latentcube.bundle import ModelBundle
from latentcube.models.config import AutoencoderConfig
from latentcube.training import AutoencoderTask, TrainConfig, fit
from test_training import _data


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    tr, va = _data()
    rng = np.random.default_rng(0)
    # 75 windows = 4 batches of 16 and one of 11, split 6 + 5: unequal shards
    tr = tr.subset(np.sort(rng.permutation(len(tr))[:75]))
    va = va.subset(np.arange(min(len(va), 40)))
    mcfg = AutoencoderConfig.preset("tiny")  # no dropout: the runs must match exactly
    cfg = TrainConfig(
        lr=3e-3,
        warmup_steps=3,
        batch_size=16,
        max_epochs=2,
        seed=3,
        num_threads=1,
        hide_centre_prob=0.5,
        hide_prob=0.1,
    )
    one = fit(AutoencoderTask(mcfg, tr, va), cfg, tmp_path / "one", progress=False)
    two = fit(AutoencoderTask(mcfg, tr, va), cfg, tmp_path / "two", nproc=2, progress=False)
    assert two.epochs == one.epochs == 2 and two.steps == one.steps == 10
    a, b = _rows(one.metrics_csv), _rows(two.metrics_csv)
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "train_center", "val_loss", "val_centre_mae"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=2e-4), (k, ra, rb)
    b1, b2 = ModelBundle.load(one.last), ModelBundle.load(two.last)
    m1, meta1, m2, meta2 = b1.model, b1.meta, b2.model, b2.meta
    assert meta1["processes"] == 1 and meta2["processes"] == 2
    d = mcfg.d_model
    for (k, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        if k.endswith("in_proj_bias"):
            # the key bias has an exactly zero gradient (softmax ignores a shift), so Adam
            # turns rounding noise into steps of size lr there; compare query and value
            p1, p2 = torch.cat([p1[:d], p1[2 * d :]]), torch.cat([p2[:d], p2[2 * d :]])
        torch.testing.assert_close(p2, p1, rtol=1e-3, atol=2e-5, msg=k)
    # the runs moved away from the initial weights (a real test, not two untrained models)
    torch.manual_seed(cfg.seed)
    init = type(m1)(mcfg).state_dict()
    assert any(not torch.allclose(init[k], v, atol=1e-3) for k, v in m1.state_dict().items())


@pytest.mark.slow
def test_torchrun_launch_equals_one_process(tmp_path):
    """``torchrun ... -m latentcube train``: each process joins the group from the
    environment (``init_from_env``, gloo on CPU) and the two-process run equals a
    one-process run, metrics and weights."""
    import os
    import subprocess
    import sys

    from latentcube.cube.readers import load_demo_cube
    from latentcube.io import write_zarr

    cube = load_demo_cube().isel(time=slice(0, 24))
    path = write_zarr(cube, tmp_path / "cube.zarr")
    (tmp_path / "cfg.yaml").write_text("train:\n  batch_size: 16\n  lr: 0.003\n  num_threads: 1\n")
    args = ["train", str(path), "--model", "tiny", "--max-epochs", "2", "--no-progress",
            "--config", str(tmp_path / "cfg.yaml"), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "one": [sys.executable, "-m", "latentcube", *args],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "latentcube", *args],
    }  # fmt: skip
    for name, cmd in runs.items():
        res = subprocess.run(
            [*cmd, "--out", str(tmp_path / name)], env=env, capture_output=True, text=True
        )
        assert res.returncode == 0, (name, res.stdout[-2000:], res.stderr[-4000:])
    a, b = _rows(tmp_path / "one" / "metrics.csv"), _rows(tmp_path / "two" / "metrics.csv")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "val_loss", "val_centre_mae"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=2e-4), (k, ra, rb)
    b1 = ModelBundle.load(tmp_path / "one" / "last.pt")
    b2 = ModelBundle.load(tmp_path / "two" / "last.pt")
    meta1, meta2 = b1.meta, b2.meta
    assert meta1["processes"] == 1 and meta2["processes"] == 2
    assert meta2["backend"] == "gloo" and meta2["device"] == meta1["device"] == "cpu"
    # the same weights as the one-process run (the tolerance of the in-process test above)
    d = b1.model.config.d_model
    for (k, p1), p2 in zip(
        b1.model.state_dict().items(), b2.model.state_dict().values(), strict=True
    ):
        if k.endswith("in_proj_bias"):  # the key bias: zero gradient, Adam steps on noise
            p1, p2 = torch.cat([p1[:d], p1[2 * d :]]), torch.cat([p2[:d], p2[2 * d :]])
        torch.testing.assert_close(p2, p1, rtol=1e-3, atol=2e-5, msg=k)


@pytest.mark.slow
def test_fusion_two_processes_equal_one_process(tmp_path):
    """Fusion trains data-parallel too: sensor dropout is drawn for the global batch, so
    two processes (fuser dropout off) give the one-process run."""
    import copy

    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.models.fusion import FusionConfig, FusionModel
    from latentcube.training import FusionTask
    from test_fusion_training import _aes

    from conftest import tiny_cube

    cube = tiny_cube(n_time=22, ny=40, nx=40, seed=0)
    tr, va = split_fusion_windows([cube], ("s2", "s1"), stride_t=2, stride_xy=2)
    rng = np.random.default_rng(0)
    # 75 windows = 4 batches of 16 and one of 11, split 6 + 5: unequal shards
    tr = tr.subset(np.sort(rng.permutation(len(tr))[:75]))
    va = va.subset(np.arange(min(len(va), 40)))
    aes = _aes()
    torch.manual_seed(1)
    fcfg = FusionConfig.for_autoencoders(aes, mode="finetune", sensor_dropout=0.3, dropout=0.0)
    model = FusionModel(fcfg, aes)
    cfg = TrainConfig(lr=3e-3, warmup_steps=3, batch_size=16, max_epochs=2, seed=3, num_threads=1)
    one = fit(FusionTask(copy.deepcopy(model), tr, va), cfg, tmp_path / "one", progress=False)
    task = FusionTask(copy.deepcopy(model), tr, va)
    two = fit(task, cfg, tmp_path / "two", nproc=2, progress=False)
    assert two.epochs == one.epochs == 2 and two.steps == one.steps == 10
    a, b = _rows(one.metrics_csv), _rows(two.metrics_csv)
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "train_loss_s2", "train_loss_s1", "val_loss", "val_centre_mae"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=2e-4), (k, ra, rb)
    b1, b2 = ModelBundle.load(one.last), ModelBundle.load(two.last)
    assert b1.meta["processes"] == 1 and b2.meta["processes"] == 2
    for (k, p1), p2 in zip(
        b1.model.state_dict().items(), b2.model.state_dict().values(), strict=True
    ):
        if "in_proj_bias" in k:  # the key bias: zero gradient, Adam steps on rounding noise
            continue
        torch.testing.assert_close(p2, p1, rtol=1e-3, atol=2e-5, msg=k)
    assert any(
        not torch.allclose(v, b1.model.state_dict()[k], atol=1e-3)
        for k, v in model.state_dict().items()
    )  # the runs moved away from the initial weights

"""Fusion training: frozen vs fine-tuned weights, adding a sensor, bundles, resume after SIGKILL."""

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
from latentcube.cube.schema import add_sensor
from latentcube.data.multisensor import split_fusion_windows
from latentcube.errors import ModelError
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.models.fusion import FusionConfig, FusionLoss, FusionModel
from latentcube.sensors import SENSORS, SensorSpec, ensure_sensor
from latentcube.training import FusionTask, TrainConfig, extend_fusion, fit
from latentcube.training.fusion import evaluate_fusion

from conftest import tiny_cube

WX = SensorSpec(name="wx", bands=("tmean", "rain"), latent_dim=1, date_matching="daily")


@pytest.fixture
def wx_sensor():
    ensure_sensor(WX)
    yield WX
    SENSORS.pop("wx", None)


def _cube(seed=0, with_wx=False):
    cube = tiny_cube(n_time=18, ny=36, nx=36, seed=seed)
    if with_wx:
        rng = np.random.default_rng(seed)
        t = cube.sizes["time"]
        daily = rng.random((t, 2)).astype(np.float32)
        data = np.broadcast_to(daily[:, :, None, None], (t, 2, 36, 36)).copy()
        cube = add_sensor(cube, "wx", data, bands=WX.bands)
    return cube


def _aes(sensors=("s2", "s1"), seed=0):
    torch.manual_seed(seed)
    return {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in sensors}


def _cfg(**kw):
    base = {"lr": 3e-3, "warmup_steps": 2, "batch_size": 32, "max_epochs": 2, "seed": 0}
    base["val_batch_size"] = 512
    return TrainConfig(**{**base, **kw})


def _load_fused(path):
    bundle = ModelBundle.load(path, kind="fusion")
    return bundle.model, bundle.meta


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_modes_and_bundle(tmp_path, mode):
    tr, va = split_fusion_windows([_cube()], ("s2", "s1"), stride_t=5, stride_xy=4)
    aes = _aes()
    model = FusionModel(FusionConfig.for_autoencoders(aes, mode=mode, sensor_dropout=0.3), aes)
    before_ae = {s: _state(ae) for s, ae in model.autoencoders.items()}
    before_fuser = _state(model.fuser)
    res = fit(FusionTask(model, tr, va), _cfg(), tmp_path, progress=False)
    assert res.epochs == 2 and res.stopped == "max_epochs"
    assert not _same(before_fuser, _state(model.fuser))
    for s, ae in model.autoencoders.items():
        assert _same(before_ae[s], _state(ae)) == (mode == "frozen"), s
    loaded, meta = _load_fused(tmp_path)  # a directory holding best.pt
    assert meta["mode"] == mode and loaded.config.mode == mode
    assert meta["autoencoder_configs"]["s1"]["latent_dim"] == 2
    with open(res.metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {"val_centre_mae_s2", "val_centre_mae_s1"} <= rows[0].keys()
    # the reloaded bundle reproduces the validation metric of its epoch
    loss = FusionLoss(loaded.config)
    got = evaluate_fusion(loaded, va, loss)["val_centre_mae"]
    assert got == pytest.approx(meta["metrics"]["val_centre_mae"], rel=1e-5)
    assert isinstance(ModelBundle.load(res.checkpoint).model, FusionModel)


def test_centre_objective_is_recorded_and_trains(tmp_path):
    tr, va = split_fusion_windows([_cube()], ("s2", "s1"), stride_t=5, stride_xy=4)
    aes = _aes()
    model = FusionModel(FusionConfig.for_autoencoders(aes, objective="centre"), aes)
    before = _state(model.fuser)
    res = fit(FusionTask(model, tr, va), _cfg(max_epochs=1), tmp_path, progress=False)
    assert not _same(before, _state(model.fuser))
    loaded, meta = _load_fused(res.checkpoint)
    assert meta["fusion_config"]["objective"] == "centre"
    assert loaded.config.objective == "centre"
    # the validation centre MAE means the same under both objectives
    ctx = FusionModel(loaded.config.model_copy(update={"objective": "context"}), aes)
    ctx.load_state_dict(loaded.state_dict())
    got = evaluate_fusion(ctx, va, FusionLoss(ctx.config))["val_centre_mae"]
    assert got == pytest.approx(meta["metrics"]["val_centre_mae"], rel=1e-5)


@pytest.mark.parametrize("objective", ["context", "centre"])
def test_frozen_cache_equals_uncached(tmp_path, objective):
    # with the centre objective the cached run loads only the windows' centres
    tr, va = split_fusion_windows([_cube()], ("s2", "s1"), stride_t=5, stride_xy=5)
    results = []
    for cache in (True, False):
        aes = _aes()
        torch.manual_seed(5)
        model = FusionModel(FusionConfig.for_autoencoders(aes, objective=objective), aes)
        r = fit(
            FusionTask(model, tr, va, cache_latents=cache),
            _cfg(),
            tmp_path / str(cache),
            progress=False,
        )
        results.append(r.best_val)
    assert results[0] == pytest.approx(results[1], rel=1e-5)


def test_add_sensor_touches_no_existing_weight(tmp_path, wx_sensor):
    cube = _cube(with_wx=True)
    tr, va = split_fusion_windows([cube], ("s2", "s1"), stride_t=5, stride_xy=4)
    aes = _aes()
    base = FusionModel(FusionConfig.for_autoencoders(aes, mode="finetune"), aes)
    fit(FusionTask(base, tr, va), _cfg(max_epochs=1), tmp_path / "base", progress=False)
    old_path = tmp_path / "base" / "best.pt"
    old_bytes = old_path.read_bytes()
    old, _ = _load_fused(old_path)
    old_state = _state(old)
    probe = va.tensors(np.arange(min(8, len(va))))
    with torch.no_grad():
        emb_before = old(probe).embedding

    # the new sensor's stage-1 autoencoder, then the extended fusion model
    wx_ae = build_autoencoder(AutoencoderConfig.preset("tiny", "wx"))
    ext = extend_fusion(old, {"wx": wx_ae}, sensor_dropout=0.2)
    assert ext.sensors == ("s2", "s1", "wx") and set(ext.config.frozen_sensors) == {"s2", "s1"}
    tr3, va3 = split_fusion_windows([cube], ("s2", "s1", "wx"), stride_t=5, stride_xy=4)
    wx_before = _state(ext.autoencoders["wx"])
    fuser_before = _state(ext.fuser)
    fit(FusionTask(ext, tr3, va3), _cfg(), tmp_path / "ext", progress=False)
    for s in ("s2", "s1"):
        assert _same(
            _state(ext.autoencoders[s]),
            {
                k.split(".", 2)[2]: v
                for k, v in old_state.items()
                if k.startswith(f"autoencoders.{s}.")
            },
        ), s
    assert not _same(wx_before, _state(ext.autoencoders["wx"]))  # the new encoder/decoder learn
    assert not _same(fuser_before, _state(ext.fuser))  # and so do the fusion layers
    # the old bundle is untouched, still loads and embeds exactly as before
    assert old_path.read_bytes() == old_bytes
    again, meta = _load_fused(old_path)
    assert meta["sensors"] == ["s2", "s1"]
    with torch.no_grad():
        torch.testing.assert_close(again(probe).embedding, emb_before, rtol=0, atol=0)
    new, new_meta = _load_fused(tmp_path / "ext" / "best.pt")
    assert new_meta["sensor_specs"]["wx"]["date_matching"] == "daily"
    with pytest.raises(ModelError, match="no new sensor"):
        extend_fusion(new, {"wx": wx_ae})


def test_bundle_registers_its_sensors(tmp_path, wx_sensor):
    aes = _aes(("s2", "wx"))
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes)
    ModelBundle(model).save(tmp_path / "model.pt")
    SENSORS.pop("wx")
    loaded, _ = _load_fused(tmp_path)
    assert "wx" in SENSORS and loaded.sensors == ("s2", "wx")
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable"):
        _load_fused(tmp_path / "model.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="without a model file"):
        _load_fused(tmp_path / "empty")


def test_cpu_time_budget_stops_fusion(tmp_path):
    tr, va = split_fusion_windows([_cube()], ("s2", "s1"), stride_t=5, stride_xy=5)
    aes = _aes()
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes)
    cfg = _cfg(max_epochs=50, batch_size=8, max_cpu_seconds=0.0)
    res = fit(FusionTask(model, tr, va), cfg, tmp_path, progress=False)
    assert res.stopped == "time_budget" and res.epochs == 1 and res.steps == 1
    # not part of the run's identity: the run continues under another budget
    res = fit(FusionTask(model, tr, va), cfg.model_copy(update={"max_cpu_seconds": None}),
              tmp_path, progress=False)  # fmt: skip
    assert res.epochs == 1 and res.stopped == "time_budget"  # a stopped run stays stopped


def test_resume_refuses_other_configuration(tmp_path):
    tr, va = split_fusion_windows([_cube()], ("s2", "s1"), stride_t=5, stride_xy=5)
    aes = _aes()
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes)
    fit(FusionTask(model, tr, va), _cfg(max_epochs=1), tmp_path, progress=False)
    other = FusionModel(FusionConfig.for_autoencoders(aes, sensor_dropout=0.5), aes)
    with pytest.raises(ModelError, match="belongs to another"):
        fit(FusionTask(other, tr, va), _cfg(max_epochs=1), tmp_path, progress=False)


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_fusion_training import _aes, _cfg, _cube
    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.training import FusionTask, fit
    from latentcube.models.fusion import FusionConfig, FusionModel
    tr, va = split_fusion_windows([_cube()], ("s2", "s1"), stride_t=5, stride_xy=4)
    aes = _aes()
    torch.manual_seed(1)
    cfg = FusionConfig.for_autoencoders(aes, mode="finetune", sensor_dropout=0.3)
    model = FusionModel(cfg, aes)
    cfg = _cfg(max_epochs=4, num_threads=1)
    res = fit(FusionTask(model, tr, va), cfg, sys.argv[1], progress=False)
    print("DONE", res.best_val)
    """
)


def _rows(path: Path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sigkill_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = [sys.executable, str(script)]
    ref = subprocess.run([*run, str(tmp_path / "ref")], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*run, str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "metrics.csv").exists() and len(_rows(out / "metrics.csv")) >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(_rows(out / "metrics.csv")) < 4, "the run must be killed part-way"
    again = subprocess.run([*run, str(out)], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = _rows(tmp_path / "ref" / "metrics.csv"), _rows(out / "metrics.csv")
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "val_loss", "val_centre_mae", "step"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-6, abs=1e-9), (k, ra, rb)


def test_sensor_declaration_yaml_matches_the_builtin(tmp_path):
    from latentcube.sensors import AGERA5, load_sensor_config

    root = Path(__file__).resolve().parents[1]
    spec = load_sensor_config(root / "docs" / "examples" / "agera5.yaml", register=False)
    assert spec == AGERA5
    assert AutoencoderConfig.preset("fast", "s2").conv_channels == (32, 48, 64, 64)
    try:
        ensure_sensor(AGERA5)
        assert AutoencoderConfig.preset("fast", "agera5").conv_channels == (8, 8, 16, 16)
        with pytest.raises(ValueError, match="another declaration"):
            ensure_sensor(AGERA5.model_copy(update={"latent_dim": 5}))
    finally:
        SENSORS.pop("agera5", None)

"""Centre-pixel reconstruction per band, checked against the training loop's metric."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentcube.bundle import save_checkpoint
from latentcube.data.windows import extract_windows
from latentcube.errors import EvaluationError, ModelError
from latentcube.evaluation.reconstruction import reconstruction_errors, run_reconstruction
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig, LossConfig
from latentcube.models.losses import ContextLoss
from latentcube.training.stage1 import evaluate

from conftest import tiny_cube


@pytest.fixture
def checkpoint(tmp_path):
    import torch

    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny", "s2")).eval()
    return save_checkpoint(tmp_path / "m.pt", model), model


def test_band_mean_equals_training_metric(checkpoint, tmp_path):
    path, model = checkpoint
    cube = tiny_cube(n_time=13, ny=24, nx=24, seed=3)
    res = reconstruction_errors(path, cube, stride_xy=3, stride_t=1, max_windows=None)
    w = extract_windows(cube, "s2", model.config.bands, mode="consecutive", stride_xy=3, stride_t=1)
    ref = evaluate(model, w, ContextLoss(LossConfig.for_sensor("s2")))["val_centre_mae"]
    assert res["model_mean"] == pytest.approx(ref, rel=1e-5)
    assert res["bands"] == list(model.config.bands) and set(res["model"]) == set(res["bands"])
    # trivial reconstructions are finite and per band
    assert all(np.isfinite(v) for v in res["persistence"].values())
    out = run_reconstruction(path, cube, tmp_path / "rep", stride_xy=3)
    saved = json.loads((tmp_path / "rep" / "results.json").read_text())["reconstruction"]
    assert saved["model_mean"] == pytest.approx(out["model_mean"])
    assert (tmp_path / "rep" / "figures" / "reconstruction_mae.png").exists()


def test_persistence_is_exact_on_a_static_scene(checkpoint):
    path, _ = checkpoint
    cube = tiny_cube(n_time=13, ny=20, nx=20, seed=1, cloud_fraction=0.0)
    cube["s2"][:] = cube["s2"].isel(time=0)  # every date identical
    res = reconstruction_errors(path, cube, stride_xy=5)
    assert res["persistence_mean"] == pytest.approx(0.0, abs=1e-7)
    assert res["context_mean_mean"] > 0  # the spatial context differs from the pixel


def test_errors(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(ModelError):
        reconstruction_errors(tmp_path / "missing.pt", tiny_cube())
    with pytest.raises(EvaluationError, match="no complete context"):
        reconstruction_errors(path, tiny_cube(n_time=8))


def test_trivial_centre_by_hand():
    from latentcube.evaluation.reconstruction import trivial_centre

    # 1 window, 3 dates, 2 bands, 3 x 3 px; the target is date 1, pixel (1, 1)
    x = np.zeros((1, 3, 2, 3, 3), np.float32)
    m = np.zeros((1, 3, 3, 3), bool)
    x[0, 1, :, 1, 1] = [9.0, 9.0]  # the target: never part of its own context
    m[0, 1, 1, 1] = True
    x[0, 0, :, 1, 1] = [1.0, 2.0]  # the pixel one date earlier
    m[0, 0, 1, 1] = True
    x[0, 2, :, 1, 1] = [3.0, 4.0]  # ... one date later (a tie: the earlier one wins)
    m[0, 2, 1, 1] = True
    x[0, 1, :, 0, 0] = [5.0, 6.0]  # a neighbour on the centre date
    m[0, 1, 0, 0] = True
    x[0, 2, :, 2, 2] = [100.0, 100.0]  # not valid: ignored
    ctx, pers = trivial_centre(x, m)
    np.testing.assert_allclose(ctx, [[(1 + 3 + 5) / 3, (2 + 4 + 6) / 3]])
    np.testing.assert_allclose(pers, [[1.0, 2.0]])
    # without another valid date of the pixel, persistence falls back to the context mean
    m[0, 0, 1, 1] = m[0, 2, 1, 1] = False
    ctx, pers = trivial_centre(x, m)
    np.testing.assert_allclose(pers, [[5.0, 6.0]])
    np.testing.assert_allclose(ctx, pers)
    # no valid context at all: NaN, no warning
    m[0, 1, 0, 0] = False
    ctx, pers = trivial_centre(x, m)
    assert np.isnan(ctx).all() and np.isnan(pers).all()


def test_a_fused_bundle_folder_is_evaluated_through_its_sensor_autoencoder(tmp_path):
    from typer.testing import CliRunner

    from latentcube.bundle import ModelBundle, default_model_path
    from latentcube.cli import app
    from latentcube.cube.readers import demo_cube_path, load_demo_cube

    cube = load_demo_cube().isel(x=slice(0, 24), y=slice(0, 24), time=slice(0, 14))
    folder = default_model_path()
    res = reconstruction_errors(folder, cube, max_windows=40)
    direct = ModelBundle.load(folder).autoencoder("s2")
    assert res["sensor"] == "s2" and res["bands"] == list(direct.config.bands)
    s1 = reconstruction_errors(folder, cube, max_windows=40, sensor="s1")
    assert s1["bands"] == ["VV", "VH"]
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            "reconstruction",
            str(demo_cube_path()),
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "centre MAE model" in r.output

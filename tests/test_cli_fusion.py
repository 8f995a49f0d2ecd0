"""``latentcube train --stage fusion`` and ``latentcube embed`` with fused bundles."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from latentcube.bundle import ModelBundle
from latentcube.cli import app
from latentcube.inference import open_embedding
from latentcube.io import write_zarr

from conftest import tiny_cube

runner = CliRunner()


def _load_fused(path):
    bundle = ModelBundle.load(path, kind="fusion")
    return bundle.model, bundle.meta


def _train(args):
    res = runner.invoke(app, ["train", *args, "--no-progress"])
    assert res.exit_code == 0, res.output
    return res


def test_train_fusion_and_embed(tmp_path):
    cube = write_zarr(tiny_cube(n_time=18, ny=34, nx=34, seed=2), tmp_path / "c.zarr")
    common = ["--model", "tiny", "--max-epochs", "1", "--seed", "1"]
    for s in ("s2", "s1"):
        _train([str(cube), "--out", str(tmp_path / s), "--sensor", s, *common])
    fused = tmp_path / "fused"
    stage2 = [
        str(cube),
        "--stage",
        "fusion",
        "--autoencoder",
        f"s2={tmp_path / 's2' / 'best.pt'}",
        "--autoencoder",
        f"s1={tmp_path / 's1' / 'best.pt'}",
    ]
    res = _train(
        [
            *stage2,
            "--out",
            str(fused),
            "--fusion-mode",
            "finetune",
            "--sensor-dropout",
            "0.3",
            "--max-epochs",
            "2",
        ]
    )
    assert "model bundle" in res.output
    model, meta = _load_fused(fused)
    assert meta["mode"] == "finetune" and model.config.sensor_dropout == 0.3
    out = tmp_path / "emb.zarr"
    res = runner.invoke(app, ["embed", str(cube), "--model", str(fused), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = open_embedding(out)
    assert ds.sizes["feature"] == 7 and "sensors" in ds
    assert ds["sensors"].attrs["flag_meanings"] == "s2 s1"
    n = int(ds["valid"].sum())
    assert n > 0 and np.isfinite(ds["embedding"].values[:, ds["valid"].values]).all()
    res = runner.invoke(
        app,
        ["embed", str(cube), "--model", str(fused), "--out", str(tmp_path / "e1"), "--hide", "s2"],
    )
    assert res.exit_code == 0, res.output
    assert not (open_embedding(tmp_path / "e1")["sensors"].values & 1).any()
    # the centre objective is selectable and recorded in the bundle
    centre = tmp_path / "centre"
    _train([*stage2, "--out", str(centre), "--fusion-objective", "centre", "--max-epochs", "1"])
    model, meta = _load_fused(centre)
    assert meta["fusion_config"]["objective"] == "centre" and meta["mode"] == "frozen"


def test_fusion_cli_errors(tmp_path):
    cube = write_zarr(tiny_cube(n_time=14, ny=20, nx=20), tmp_path / "c.zarr")
    fusion = ["train", str(cube), "--out", str(tmp_path / "f"), "--stage", "fusion"]
    res = runner.invoke(app, fusion)
    assert res.exit_code == 2 and "--autoencoder" in res.output
    res = runner.invoke(app, [*fusion, "--autoencoder", "s2"])
    assert res.exit_code == 2 and "SENSOR=CHECKPOINT" in res.output
    fusion += ["--autoencoder", f"s2={tmp_path / 'missing.pt'}"]
    res = runner.invoke(app, fusion)
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    res = runner.invoke(app, ["train", str(cube), "--out", str(tmp_path / "f"), "--stage", "3"])
    assert res.exit_code == 2 and "--stage" in res.output
    res = runner.invoke(app, [*fusion, "--fusion-objective", "window"])
    assert res.exit_code == 2 and "--fusion-objective" in res.output


def test_shipped_default_model(tmp_path, monkeypatch):
    import torch

    from latentcube.bundle import default_model_path
    from latentcube.cube.readers import load_demo_cube
    from latentcube.evaluation.runs import embedding_features as _embeddings
    from latentcube.inference import embed, embedding_dataset

    path = default_model_path()
    assert (path / "model.pt").stat().st_size < 5 * 2**20
    assert (path / "MODEL_CARD.md").exists()
    model, meta = _load_fused(path)
    assert model.sensors == ("s2", "s1") and meta["mode"] == "frozen"
    assert meta["autoencoder_configs"]["s2"]["variant"] == "fast"
    cube = load_demo_cube().isel(y=slice(0, 24), x=slice(0, 24), time=slice(0, 16))
    src = write_zarr(cube, tmp_path / "crop.zarr")
    out = tmp_path / "emb.zarr"
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    res = runner.invoke(
        app,
        ["embed", str(src), "--out", str(out), "--no-progress", "--chunk", "8", "--time-chunk",
         "5", "--workers", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "shipped default" in res.output
    assert len(loads) == 1  # one read of the bundle in this process (the Dask worker has its own)
    ds = open_embedding(out)
    assert ds.sizes["feature"] == 7 and int(ds["valid"].sum()) > 0
    # the Dask run (chunks smaller than the context) equals the in-memory fused path
    ref = embedding_dataset(embed(cube, model)).compute()
    np.testing.assert_allclose(
        ds["embedding"].values, ref["embedding"].values, rtol=0, atol=1e-5, equal_nan=True
    )
    np.testing.assert_array_equal(ds["sensors"].values, ref["sensors"].values)
    loads.clear()
    _embeddings([cube], path, None, "fused")  # evaluate --model: one read too
    assert len(loads) == 1
    monkeypatch.undo()
    args = ["demo", "--cube", str(src), "--out", str(tmp_path / "d"), "--pretrained"]
    res = runner.invoke(app, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "demo.png").exists()

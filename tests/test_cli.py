"""The command line, and the demo pipeline end to end on a cropped real cube."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.cube.readers import load_demo_cube
from latentcube.inference import open_embedding
from latentcube.io import write_zarr

runner = CliRunner()


def test_help_lists_only_working_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "demo" in res.output and "info" in res.output
    res = runner.invoke(app, ["demo", "--help"])
    assert res.exit_code == 0 and "--train-seconds" in res.output


def test_version():
    from latentcube import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_info_on_demo_cube():
    from latentcube.cube.readers import demo_cube_path

    res = runner.invoke(app, ["info", str(demo_cube_path())])
    assert res.exit_code == 0, res.output
    assert "EPSG:32631" in res.output and "s1" in res.output and "B8A" in res.output


def test_info_on_bad_path(tmp_path):
    res = runner.invoke(app, ["info", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no cube at" in res.output


@pytest.mark.slow
def test_demo_end_to_end_on_cropped_real_cube(tmp_path):
    cube = load_demo_cube().isel(y=slice(0, 40), x=slice(0, 40), time=slice(0, 30))
    src = write_zarr(cube, tmp_path / "crop.zarr")
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(out),
            "--cube",
            str(src),
            "--model",
            "tiny",
            "--train-seconds",
            "8",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "latentcube demo: summary" in res.output
    emb = open_embedding(out / "embedding.zarr")
    assert emb.rio.crs.to_epsg() == 32631
    assert emb["embedding"].shape == (9, 30, 40, 40)
    e = emb["embedding"].values
    assert np.isfinite(e).all(0).sum() > 1000
    assert np.isnan(e[:, :5]).all() and np.isnan(e[:, :, :7]).all()
    assert (out / "demo.png").stat().st_size > 10_000
    assert (out / "model" / "best.pt").exists() and (out / "model" / "metrics.csv").exists()


def test_demo_rejects_unknown_model(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--model", "huge"])
    assert res.exit_code == 2 and "--model must be" in res.output


@pytest.mark.slow
def test_train_then_embed_on_two_real_patches(tmp_path):
    from latentcube.cube.readers import read_worldcereal_patch

    from conftest import shared_path

    flanders = "worldcereal_s1_s2_training_patches_flanders"
    paths = []
    for name in ("00002806639B424A", "0000280849BAC91C"):
        cube = read_worldcereal_patch(shared_path(flanders, name), min_valid_fraction=0.5)
        crop = cube.isel(y=slice(0, 32), x=slice(0, 32), time=slice(0, 24))
        paths.append(write_zarr(crop, tmp_path / f"{name}.zarr"))
    (tmp_path / "cfg.yaml").write_text("train:\n  batch_size: 64\n  lr: 0.003\n")
    res = runner.invoke(
        app,
        [
            "train",
            *map(str, paths),
            "--out",
            str(tmp_path / "m"),
            "--model",
            "tiny",
            "--max-epochs",
            "2",
            "--no-progress",
            "--config",
            str(tmp_path / "cfg.yaml"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "best validation centre-pixel MAE" in res.output
    res = runner.invoke(
        app,
        [
            "embed",
            str(paths[0]),
            "--model",
            str(tmp_path / "m" / "best.pt"),
            "--out",
            str(tmp_path / "e.zarr"),
            "--dtype",
            "float16",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    emb = open_embedding(tmp_path / "e.zarr")
    assert emb["embedding"].shape == (9, 24, 32, 32) and int(emb["valid"].sum()) > 100
    again = runner.invoke(
        app,
        [
            "embed",
            str(paths[0]),
            "--model",
            str(tmp_path / "m" / "best.pt"),
            "--out",
            str(tmp_path / "e.zarr"),
        ],
    )
    assert again.exit_code == 2 and "exists" in again.output


def test_embed_with_a_corrupt_checkpoint(tmp_path):
    from latentcube.cube.readers import demo_cube_path

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    res = runner.invoke(
        app,
        ["embed", str(demo_cube_path()), "--model", str(bad), "--out", str(tmp_path / "e.zarr")],
    )
    assert res.exit_code == 2 and "not a readable latentcube checkpoint" in res.output
    assert not (tmp_path / "e.zarr").exists()


def _tiny_checkpoint(path):
    import torch

    from latentcube.bundle import save_checkpoint
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig

    torch.manual_seed(0)
    return save_checkpoint(path, build_autoencoder(AutoencoderConfig.preset("tiny")).eval())


def test_embed_builds_the_cube_first_from_a_place(tmp_path, monkeypatch):
    """--lat/--lon/--start/--end call latentcube.cube.build.build_cube, then embed its store."""
    import sys
    import types

    from conftest import tiny_cube

    calls = []

    def build_cube(**kw):
        calls.append(kw)
        cube = tiny_cube(n_time=12, ny=18, nx=17, seed=5)
        write_zarr(cube, kw["out"])
        return cube

    monkeypatch.setitem(
        sys.modules, "latentcube.cube.build", types.SimpleNamespace(build_cube=build_cube)
    )
    ckpt = _tiny_checkpoint(tmp_path / "m.pt")
    args = [
        "embed",
        "--lat",
        "50.8",
        "--lon",
        "3.3",
        "--size-m",
        "170",
        "--start",
        "2020-03-01",
        "--end",
        "2020-09-30",
        "--model",
        str(ckpt),
        "--out",
        str(tmp_path / "e.zarr"),
        "--workers",
        "1",
        "--no-progress",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(calls) == 1
    kw = calls[0]
    assert (kw["lat"], kw["lon"], kw["size_m"], kw["start"], kw["end"]) == (
        50.8,
        3.3,
        170.0,
        "2020-03-01",
        "2020-09-30",
    )
    assert kw["out"] == tmp_path / "e_cube.zarr" and tuple(kw["sensors"]) == ("s2",)
    assert "catalog" not in kw  # the builder's default catalogue
    emb = open_embedding(tmp_path / "e.zarr")
    assert emb["embedding"].shape == (9, 12, 18, 17) and int(emb["valid"].sum()) > 0
    # errors name the problem: a missing date, both a cube and a place, no build module
    res = runner.invoke(app, [*args[:7], *args[9:], "--overwrite"])
    assert res.exit_code == 2 and "needs --start" in res.output
    res = runner.invoke(app, [*args, str(tmp_path / "e_cube.zarr")])
    assert res.exit_code == 2 and "either a CUBE" in res.output
    monkeypatch.setitem(sys.modules, "latentcube.cube.build", None)
    other = [*args[:-5], "--out", str(tmp_path / "f.zarr"), "--cube-out", str(tmp_path / "c2.zarr")]
    res = runner.invoke(app, other)
    assert res.exit_code == 2 and "needs latentcube.cube.build" in res.output
    assert not (tmp_path / "f.zarr").exists()

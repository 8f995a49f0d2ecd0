"""The command line, and the demo pipeline end to end on a cropped real cube."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.cube.readers import load_demo_cube
from latentcube.inference import open_embedding
from latentcube.io import open_zarr, write_zarr

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


@pytest.mark.shared
def test_cube_command_builds_a_store_and_reports_bad_input(tmp_path):
    from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

    from conftest import shared_path

    cat = make_catalog(tmp_path / "stac", read_source(shared_path(FLANDERS, PATCH)))
    lon, lat = centre_lonlat()
    out = tmp_path / "cube.zarr"
    args = ["cube", "--lat", str(lat), "--lon", str(lon), "--size-m", "640",
            "--start", "2018-09-15", "--end", "2018-10-20", "--catalog", str(cat),
            "--no-progress"]  # fmt: skip
    res = runner.invoke(app, [*args, "--out", str(out), "--sensors", "s2,s1"])
    assert res.exit_code == 0, res.output
    assert "3 dates x 64 x 64 px" in res.output and "S1 matched on 2 dates" in res.output
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "2/3 dates matched" in res.output
    bad = [a if a != "2018-09-15" else "2018-11-01" for a in args]
    res = runner.invoke(app, [*bad, "--out", str(tmp_path / "bad.zarr")])
    assert res.exit_code == 2 and "after end" in res.output
    assert not (tmp_path / "bad.zarr").exists()
    res = runner.invoke(app, ["cube", "--bbox", "4.05", "50.74", "4.07", "50.75", "--start",
                              "2018-10-18", "--end", "2018-10-18", "--catalog", str(cat),
                              "--sensors", "s2", "--out", str(tmp_path / "b.zarr"),
                              "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cube", "--help"])
    assert "--bbox" in res.output and "--catalog" in res.output


def test_models_prints_the_paper_size_against_the_spec():
    res = runner.invoke(app, ["models", "--sensor", "s2"])
    assert res.exit_code == 0, res.output
    paper = next(line for line in res.output.splitlines() if line.startswith("paper"))
    assert "3,702,019" in paper and "spec ~3.7 M: +0.1%" in paper
    fast = next(line for line in res.output.splitlines() if line.startswith("fast"))
    assert "15 x 15" in fast and "yes" in fast


def test_train_with_config_name_cubes_option_and_gap_filling(tmp_path):
    from latentcube.bundle import ModelBundle

    from conftest import tiny_cube

    paths = [
        write_zarr(tiny_cube(n_time=16, ny=20, nx=20, seed=s), tmp_path / f"c{s}.zarr")
        for s in range(2)
    ]
    args = ["train", "--sensor", "s1", "--config", "tiny", "--out", str(tmp_path / "m")]
    for p in paths:
        args += ["--cubes", str(p)]
    args += ["--max-epochs", "1", "--hide-centre", "0.5", "--hide-other", "0.1", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "tiny s1 model" in res.output
    meta = ModelBundle.load(tmp_path / "m" / "best.pt", sensor="s1", expect_bands=("VV", "VH")).meta
    assert meta["train_config"]["hide_centre_prob"] == 0.5
    assert meta["provenance"]["cubes"] == [str(p) for p in paths]
    assert meta["normalisation"]["bands"] == ["VV", "VH"]


def test_train_argument_errors(tmp_path):
    res = runner.invoke(app, ["train", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "no cubes given" in res.output
    cube = str(tmp_path / "x.zarr")
    res = runner.invoke(app, ["train", cube, "--config", "paper", "--model", "tiny"])
    assert res.exit_code == 2 and "disagree" in res.output
    res = runner.invoke(app, ["train", cube, "--config", "huge"])
    assert res.exit_code == 2 and "or a YAML file" in res.output


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


@pytest.mark.shared
def test_embed_from_a_place_through_the_real_cube_builder(tmp_path):
    """``embed --lat --lon --start --end`` builds the cube with build_cube from a local
    static STAC catalog of real pixels, then embeds it (edge pad: only 3 dates)."""
    from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

    from conftest import shared_path

    cat = make_catalog(tmp_path / "stac", read_source(shared_path(FLANDERS, PATCH)))
    lon, lat = centre_lonlat()
    ckpt = _tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "e.zarr"
    args = ["embed", "--lat", str(lat), "--lon", str(lon), "--size-m", "320",
            "--start", "2018-09-15", "--end", "2018-10-20", "--catalog", str(cat),
            "--model", str(ckpt), "--out", str(out), "--edge", "pad", "--workers", "1",
            "--no-progress"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    cube = open_zarr(tmp_path / "e_cube.zarr")
    emb = open_embedding(out)
    assert emb["embedding"].shape == (9, 3, 32, 32)
    assert cube.sizes["time"] == 3 and cube.sizes["y"] == 32
    np.testing.assert_array_equal(emb["x"].values, cube["x"].values)
    assert emb.rio.crs == cube.rio.crs
    assert int(emb["valid"].sum()) == int(cube["s2_valid"].sum()) > 0


@pytest.mark.shared
def test_time_axis_option_of_cube_and_embed(tmp_path):
    """``cube --time-axis union`` and ``embed --lat ... --time-axis union`` (shipped fused model)
    on a local static STAC catalog of real pixels."""
    from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source

    from conftest import shared_path

    cat = make_catalog(tmp_path / "stac", read_source(shared_path(FLANDERS, PATCH)))
    lon, lat = centre_lonlat()
    place = ["--lat", str(lat), "--lon", str(lon), "--size-m", "320", "--start", "2018-09-01",
             "--end", "2018-10-31", "--catalog", str(cat), "--no-progress"]  # fmt: skip
    res = runner.invoke(app, ["cube", *place, "--out", str(tmp_path / "u.zarr"),
                              "--time-axis", "union"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "11 dates x 32 x 32 px" in res.output and "(8 of them S1-only)" in res.output
    res = runner.invoke(app, ["cube", *place, "--out", str(tmp_path / "b.zarr"),
                              "--time-axis", "both"])  # fmt: skip
    assert res.exit_code == 2 and "time_axis must be one of" in res.output
    out = tmp_path / "e.zarr"
    res = runner.invoke(app, ["embed", *place, "--out", str(out), "--time-axis", "union",
                              "--workers", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    cube = open_zarr(tmp_path / "e_cube.zarr")
    assert cube.attrs["time_axis"] == "union" and cube.sizes["time"] == 11
    emb = open_embedding(out)
    assert emb.attrs["time_axis"] == "union" and emb["embedding"].shape == (7, 11, 32, 32)
    # 11 dates, 3 of them S2: only the middle date (an S1-only day) has a full context
    # (11 dates), and it is embedded from S1 alone on the 18 x 18 inner pixels
    flags = emb["sensors"].values
    assert (flags[5, 7:-7, 7:-7] == 2).all() and (flags.sum() == 2 * 18 * 18)
    assert not cube["s2_observed"].values[5]


def test_whiten_a_stage1_model_and_the_shipped_bundle(tmp_path):
    """``latentcube whiten``: a copy whose outputs on the training windows have identity
    covariance, the original's metadata kept, the input never overwritten."""
    import torch

    from latentcube.bundle import ModelBundle, default_model_path
    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.data.windows import split_windows

    from conftest import tiny_cube

    cube = tiny_cube(n_time=18, ny=40, nx=40, seed=3)
    path = write_zarr(cube, tmp_path / "c.zarr")
    args = ["train", str(path), "--sensor", "s1", "--config", "tiny", "--out", str(tmp_path / "m")]
    res = runner.invoke(app, [*args, "--max-epochs", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    src = tmp_path / "m" / "best.pt"
    before = src.read_bytes()
    res = runner.invoke(app, ["whiten", str(src), str(path), "--out", str(tmp_path / "w.pt")])
    assert res.exit_code == 0, res.output
    assert "whitened on" in res.output and src.read_bytes() == before
    bundle = ModelBundle.load(tmp_path / "w.pt", sensor="s1")
    model, meta = bundle.model, bundle.meta
    assert model.whitening.is_fitted
    assert meta["normalisation"]["bands"] == ["VV", "VH"]  # carried over
    assert meta["whitening"]["cubes"] == [str(path)] and meta["whitening"]["windows"] > 7
    tr, _ = split_windows([cube], "s1", ("VV", "VH"), seed=42)
    with torch.no_grad():
        z = model.encode(*(torch.from_numpy(a) for a in tr.batch(np.arange(len(tr)))))
    assert np.allclose(np.cov(z.double().numpy().T), np.eye(z.shape[1]), atol=1e-3)

    # the shipped fused bundle (a folder)
    res = runner.invoke(
        app, ["whiten", str(default_model_path()), str(path), "-o", str(tmp_path / "f.pt")]
    )
    assert res.exit_code == 0, res.output
    bundle = ModelBundle.load(tmp_path / "f.pt")
    fused, fmeta = bundle.model, bundle.meta
    assert fused.whitening.is_fitted and fmeta["sensors"] == ["s2", "s1"]
    ftr, _ = split_fusion_windows([cube], fused.sensors, seed=42)
    with torch.no_grad():
        e = fused(ftr.tensors(np.arange(len(ftr))), decode=False).embedding
    e = e[torch.isfinite(e).all(1)]
    assert np.allclose(np.cov(e.double().numpy().T), np.eye(7), atol=1e-3)

    # refused: overwriting the input, a file that is not .pt
    res = runner.invoke(app, ["whiten", str(src), str(path), "--out", str(src)])
    assert res.exit_code == 2 and "is the input model" in res.output
    assert src.read_bytes() == before
    res = runner.invoke(app, ["whiten", str(src), str(path), "--out", str(tmp_path / "w.zarr")])
    assert res.exit_code == 2 and ".pt file" in res.output

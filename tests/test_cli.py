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

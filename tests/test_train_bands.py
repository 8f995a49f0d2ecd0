"""Training on cubes with fewer bands than a preset: --bands auto, preset or a list."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from latentcube.bundle import ModelBundle
from latentcube.cli import app

from conftest import shared_path

runner = CliRunner()
CUBE = "JAS2021_replicated_minicube_0_29SND_39.29_-8.56.nc"
TRAIN = ["--model", "tiny", "--max-epochs", "1", "--max-seconds", "2", "--no-progress"]


@pytest.mark.shared
def test_a_four_band_cube_trains_on_its_bands_or_says_which_option(tmp_path):
    cube = shared_path("greenearthnet_replicated_minicubes", CUBE)
    res = runner.invoke(app, ["train", str(cube), *TRAIN, "--out", str(tmp_path / "auto")])
    assert res.exit_code == 0, res.output
    bundle = ModelBundle.load(tmp_path / "auto")
    assert bundle.bands["s2"] == ("B02", "B03", "B04", "B8A")  # the preset's order
    res = runner.invoke(
        app, ["train", str(cube), *TRAIN, "--bands", "preset", "--out", str(tmp_path / "p")]
    )
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert CUBE in errors[0] and "--bands auto" in errors[0] and "B05" in errors[0]
    res = runner.invoke(
        app, ["train", str(cube), *TRAIN, "--bands", "B04,B8A", "--out", str(tmp_path / "l")]
    )
    assert res.exit_code == 0, res.output
    assert ModelBundle.load(tmp_path / "l").bands["s2"] == ("B04", "B8A")

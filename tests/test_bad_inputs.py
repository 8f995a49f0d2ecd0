"""Bad inputs through the CLI as a user types them: one line naming the file, exit 2.

The cases of the reliability issue not covered by the suites of one area
(tests/test_bad_cube_inputs.py for readers, tests/test_bad_inputs_training.py for
training and whitening, tests/test_bad_inputs_embed.py for embedding,
tests/test_cli_analysis.py for the analysis commands). For the refusals of writes,
every file that was there is checked byte for byte afterwards.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.cube.readers import demo_cube_path

from conftest import snapshot

pytestmark = pytest.mark.bad_inputs

runner = CliRunner()


def _refused(args: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with one error line holding every needle."""
    res = runner.invoke(app, args)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def cube(tmp_path):
    """A copy of the bundled sample cube the test may not change."""
    path = tmp_path / "inputs" / "cube.zarr.zip"
    path.parent.mkdir()
    path.write_bytes(demo_cube_path().read_bytes())
    return path


def test_yaml_with_a_python_tag_is_refused_naming_the_file(tmp_path, cube):
    evil = tmp_path / "recipe.yaml"
    evil.write_text('train: !!python/object/apply:os.system ["echo pwned"]\n')
    line = _refused(["train", str(cube), "--model", str(evil), "--out", str(tmp_path / "m")],
                    str(evil), "line 1", "never Python objects")  # fmt: skip
    assert "pwned" not in line
    sensor = tmp_path / "sensor.yaml"
    sensor.write_text("name: !!python/name:os.system\n")
    _refused(["train", str(cube), "--sensor-config", str(sensor), "--out", str(tmp_path / "m")],
             str(sensor))  # fmt: skip


def test_a_missing_optional_package_names_the_extra(tmp_path, cube, monkeypatch):
    labels = tmp_path / "labels.tif"
    import rioxarray  # noqa: F401

    from latentcube.cube.readers import open_cube

    c = open_cube(cube)
    lab = c["s2_valid"].isel(time=0).astype("uint8").rio.write_crs(c.rio.crs)
    lab.values[:] = (np.arange(lab.size).reshape(lab.shape) // 700 % 3 + 1).astype("uint8")
    lab.rio.to_raster(labels)
    monkeypatch.setitem(sys.modules, "spyndex", None)  # as if the [eval] extra were absent
    _refused(["evaluate", "croptype", str(cube), "--labels", str(labels), "--out",
              str(tmp_path / "rep")], "spyndex", "pip install 'latentcube[eval]'")  # fmt: skip


@pytest.mark.parametrize("value", ["0", "-1"])
def test_worker_counts_below_one_are_refused_before_any_work(tmp_path, cube, value):
    _refused(["embed", str(cube), "--out", str(tmp_path / "e.zarr"), "--workers", value],
             f"workers must be a positive integer, got {value}")  # fmt: skip
    _refused(["cube", "--out", str(tmp_path / "c.zarr"), "--lat", "51", "--lon", "3",
              "--start", "2020-01-01", "--end", "2020-02-01", "--workers", value],
             f"workers must be a positive integer, got {value}")  # fmt: skip
    assert not (tmp_path / "e.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_report_folders_over_inputs_or_under_files_are_refused(tmp_path, cube):
    from latentcube.bundle import default_model_path

    before = snapshot(cube.parent)
    model = str(default_model_path())
    base = ["evaluate", "reconstruction", str(cube), "--model", model, "--out"]
    _refused([*base, str(cube)], "is the input")
    _refused([*base, str(cube.parent)], "contains the input")
    _refused([*base, str(cube / "rep")], "is inside the input")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _refused([*base, str(blocker / "rep")], "is a file")
    assert snapshot(cube.parent) == before and blocker.read_text() == "not a folder"


def test_a_pickled_checkpoint_is_refused_without_advice_to_load_it(tmp_path, cube):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    bad = tmp_path / "hostile.pt"
    torch.save({"x": Payload()}, bad)
    line = _refused(["evaluate", "reconstruction", str(cube), "--model", str(bad), "--out",
                     str(tmp_path / "rep")], str(bad), "pickled Python objects")  # fmt: skip
    assert "weights_only" not in line


def test_gpp_in_the_wrong_units_is_refused_naming_the_file(tmp_path):
    days = pd.date_range("2018-01-01", periods=120, freq="D")
    gpp = 1000 * np.abs(np.sin(np.linspace(0, 3, 120))) * 12  # mgC, not gC
    flux = tmp_path / "FLX_XX-Big_FULLSET_DD.csv"
    pd.DataFrame({"TIMESTAMP": days.strftime("%Y%m%d").astype(int), "GPP_NT_VUT_REF": gpp,
                  "NEE_VUT_REF_QC": np.ones(120)}).to_csv(flux, index=False)  # fmt: skip
    _refused(["evaluate", "gpp", "--flux", str(flux), "--lat", "50", "--out",
              str(tmp_path / "rep")], flux.name, "not in gC m-2 d-1")  # fmt: skip
    assert not (tmp_path / "rep").exists()


def test_embed_outputs_that_cannot_be_a_store_are_refused_before_any_work(tmp_path, cube):
    before = snapshot(cube.parent)
    zip_out = tmp_path / "e.zip"
    _refused(["embed", str(cube), "--out", str(zip_out), "--no-progress"], "e.zip", ".zarr")
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    _refused(["embed", str(cube), "--out", str(link), "--no-progress"], "symbolic link")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _refused(["embed", str(cube), "--out", str(blocker / "e.zarr"), "--no-progress"],
             "is a file")  # fmt: skip
    assert not zip_out.exists() and list(real.iterdir()) == [] and blocker.read_text() == "x"
    assert snapshot(cube.parent) == before

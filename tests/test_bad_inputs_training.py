"""Training and whitening outputs are safe: run as a user would, with bad inputs and outputs.

Each refusal exits with code 2 and one line naming the file, and leaves every file that
was there byte for byte as it was.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.io import write_zarr

from conftest import snapshot, tiny_cube

pytestmark = pytest.mark.bad_inputs

runner = CliRunner()
TRAIN = ["--model", "tiny", "--max-epochs", "1", "--no-progress"]


def _error_line(output: str) -> str:
    """The one error line of a refused command (and no traceback)."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cube and a finished one-epoch training run of it, trained once for the module.

    Returns the folder that holds them (``c.zarr``, ``m``) and a pristine copy of it.
    """
    home = tmp_path_factory.mktemp("run")
    cube = write_zarr(tiny_cube(n_time=18, ny=40, nx=40, seed=4), home / "c.zarr")
    res = runner.invoke(app, ["train", str(cube), "--out", str(home / "m"), *TRAIN])
    assert res.exit_code == 0, res.output
    pristine = tmp_path_factory.mktemp("pristine") / "run"
    shutil.copytree(home, pristine)
    return home, pristine


@pytest.fixture
def run(trained):
    """``(cube, run folder)`` of the module's training run, as it was when trained.

    A run records the paths of its cube and folder, so each test gets the files back
    at the same paths (copied from the pristine copy) rather than a copy elsewhere.
    """
    home, pristine = trained
    shutil.rmtree(home)
    shutil.copytree(pristine, home)
    return home / "c.zarr", home / "m"


KILL_IN_EPOCH_1 = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from latentcube.cli import app

    def die(*args, **kwargs):  # the first optimiser step of the run: inside epoch 1
        os.kill(os.getpid(), signal.SIGKILL)

    torch.optim.AdamW.step = die
    app(sys.argv[1:], prog_name="latentcube")
    """
)


@pytest.mark.slow
def test_no_resume_killed_in_epoch_1_leaves_the_previous_model(run, tmp_path):
    cube, out = run
    before = snapshot(out)
    assert {"best.pt", "last.pt", "metrics.csv"} <= before.keys()
    script = tmp_path / "kill.py"
    script.write_text(KILL_IN_EPOCH_1)
    proc = subprocess.run(
        [sys.executable, str(script), "train", str(cube), "--out", str(out), *TRAIN,
         "--no-resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert snapshot(out) == before  # nothing deleted or replaced before epoch 1 was complete


def test_a_folder_with_another_runs_model_is_refused_unless_overwrite(run, tmp_path):
    cube, out = run
    # best.pt of another run, without a last.pt to resume
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "best.pt", other / "best.pt")
    before = snapshot(other)
    res = runner.invoke(app, ["train", str(cube), "--out", str(other), *TRAIN])
    assert res.exit_code == 2
    assert str(other / "best.pt") in _error_line(res.output)
    assert snapshot(other) == before
    res = runner.invoke(app, ["train", str(cube), "--out", str(other), *TRAIN, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (other / "last.pt").exists() and (other / "best.pt").read_bytes() != before["best.pt"]
    # last.pt of another configuration (another seed) with --no-resume
    before = snapshot(out)
    res = runner.invoke(
        app, ["train", str(cube), "--out", str(out), *TRAIN, "--no-resume", "--seed", "7"]
    )
    assert res.exit_code == 2
    assert str(out / "last.pt") in _error_line(res.output)
    assert snapshot(out) == before


def test_whiten_refuses_an_existing_output_and_checks_it_before_fitting(run, tmp_path):
    cube, out = run
    before = snapshot(out)
    res = runner.invoke(
        app, ["whiten", str(out / "best.pt"), str(cube), "-o", str(out / "last.pt")]
    )
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert str(out / "last.pt") in line and "--overwrite" in line
    assert snapshot(out) == before
    # an output that cannot be written is refused before the model is fitted (or the
    # cubes are even read: here the cube does not exist)
    (tmp_path / "file.txt").write_text("not a folder")
    bad_out = tmp_path / "file.txt" / "w.pt"
    for cubes in ([str(cube)], [str(tmp_path / "missing.zarr")]):
        res = runner.invoke(app, ["whiten", str(out / "best.pt"), *cubes, "-o", str(bad_out)])
        assert res.exit_code == 2
        line = _error_line(res.output)
        assert str(bad_out) in line and "not a folder" in line
    assert snapshot(out) == before
    res = runner.invoke(
        app,
        ["whiten", str(out / "best.pt"), str(cube), "-o", str(out / "last.pt"), "--overwrite"],
    )
    assert res.exit_code == 0, res.output


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from latentcube.io import locked

    with locked(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
    """
)


def test_a_second_run_into_a_folder_in_use_is_refused(run, tmp_path):
    cube, out = run
    before = snapshot(out)
    script = tmp_path / "hold.py"
    script.write_text(HOLD_LOCK)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # the same run again from scratch: allowed, were the folder not in use
        res = runner.invoke(app, ["train", str(cube), "--out", str(out), *TRAIN, "--no-resume"])
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert str(out) in line and "in use" in line
    assert snapshot(out) == before


def test_a_run_resumed_on_other_data_is_refused(run, tmp_path):
    cube, out = run
    before = snapshot(out)
    # the cube rebuilt at the same path: same dates, grid and validity, other values
    changed = tiny_cube(n_time=18, ny=40, nx=40, seed=4)
    changed["s2"] = changed["s2"] * 0.9
    shutil.rmtree(cube)
    write_zarr(changed, cube)
    res = runner.invoke(app, ["train", str(cube), "--out", str(out), *TRAIN])
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert str(out / "last.pt") in line and "other data" in line
    assert snapshot(out) == before
    # another cube of the same shape at another path
    other = write_zarr(changed, tmp_path / "c2.zarr")
    res = runner.invoke(app, ["train", str(other), "--out", str(out), *TRAIN])
    assert res.exit_code == 2 and "other data" in _error_line(res.output)
    assert snapshot(out) == before


@pytest.mark.parametrize(("where", "how"), [("c.zarr", "is"), ("c.zarr/model", "is inside"),
                                            (".", "contains")])  # fmt: skip
def test_an_output_over_an_input_cube_is_refused(tmp_path, where, how):
    cube = write_zarr(tiny_cube(n_time=18, ny=40, nx=40, seed=1), tmp_path / "c.zarr")
    before = snapshot(tmp_path)
    out = tmp_path / where
    res = runner.invoke(app, ["train", str(cube), "--out", str(out), *TRAIN])
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert f"{how} the input" in line and str(cube) in line
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "c.zarr" / "model").exists()


def test_a_fusion_output_over_its_stage1_checkpoint_is_refused(run):
    """Even from scratch (``--no-resume``), which would start by deleting the input."""
    cube, out = run
    before = snapshot(out)
    res = runner.invoke(
        app,
        ["train", str(cube), "--stage", "fusion", "--autoencoder", f"s2={out / 'best.pt'}",
         "--out", str(out), "--max-epochs", "1", "--no-progress", "--no-resume"],
    )  # fmt: skip
    assert res.exit_code == 2
    assert f"contains the input {out / 'best.pt'}" in _error_line(res.output)
    assert snapshot(out) == before

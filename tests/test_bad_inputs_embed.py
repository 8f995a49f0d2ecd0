"""``latentcube embed`` refuses bad inputs in one line and never damages what exists.

Every test runs the command as a user does (``typer.testing.CliRunner`` on the app,
or a subprocess where the run must be killed or could hang) and checks, besides the
outcome, that the files that existed before (the cube, an earlier output) are byte
for byte unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.io import write_zarr

from conftest import snapshot, tiny_cube

pytestmark = pytest.mark.bad_inputs

runner = CliRunner()


def refused(res, *names: str) -> str:
    """The one-line error of a refused command, which names ``names``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    assert res.output.rstrip().endswith(errors[0])  # nothing follows the message
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def cube_path(tmp_path):
    return write_zarr(tiny_cube(n_time=14, ny=24, nx=24, seed=1), tmp_path / "cube.zarr")


# -- (a) the output must not be, lie inside or contain the input ---------------------


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_output_over_the_cube_is_refused_before_anything_is_touched(tmp_path, where):
    folder = tmp_path / "data"
    cube = write_zarr(tiny_cube(n_time=14, ny=24, nx=24, seed=1), folder / "cube.zarr")
    out = {"is": cube, "inside": cube / "e.zarr", "contains": folder}[where]
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(cube), "--out", str(out), "--overwrite"])
    line = refused(res, str(cube))
    assert {"is": "is the input", "inside": "is inside the input", "contains": "contains"}[
        where
    ] in line
    assert snapshot(tmp_path) == before


def test_output_equal_to_the_cube_is_not_called_an_embedding_store(cube_path, tmp_path):
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(cube_path), "--out", str(cube_path)])
    line = refused(res, str(cube_path))
    assert "embedding store" not in line and "the input" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("cube_out", "how"), [("e.zarr", "is"), ("e.zarr/c.zarr", "contains")])
def test_a_cube_to_build_over_the_output_is_refused_before_it_is_built(tmp_path, cube_out, how):
    place = ["--lat", "50.8", "--lon", "3.3", "--start", "2020-03-01", "--end", "2020-09-30"]
    out, cube = tmp_path / "e.zarr", tmp_path / cube_out
    res = runner.invoke(app, ["embed", *place, "--out", str(out), "--cube-out", str(cube)])
    line = refused(res, str(out), str(cube))
    assert f"{how} the input" in line
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


# -- (b), (c): replacing, locking, completeness (runs in subprocesses) -------------


# 24 chunks on Dask worker threads of the run's own process: no worker process to start
CHUNKS = ["--no-progress", "--chunk", "16", "--time-chunk", "4", "--no-processes"]
# the whole cube as one chunk: the run embeds it in its own process, without Dask
ONE_CHUNK = ["--no-progress", "--chunk", "32", "--time-chunk", "24"]


def _embed_process(cube: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``latentcube embed`` in a process of its own, on one Dask worker thread."""
    cmd = [sys.executable, "-m", "latentcube", "embed", str(cube), "--out", str(out)]
    cmd += [*CHUNKS, "--workers", "1", *extra]
    return subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _markers(folder: Path) -> list[Path]:
    """Chunk markers of any run writing into ``folder`` (in ``.<store>.progress``)."""
    return [m for d in folder.glob(".*.progress") for m in d.iterdir()]


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the run and any worker process it started
    proc.wait()


@pytest.fixture(scope="module")
def slow_cube(tmp_path_factory):
    """A cube whose embedding runs in 24 chunks (2 x 2 tiles x 6 date blocks of CHUNKS).

    A run killed once it has written two chunks still has most of them ahead.
    """
    root = tmp_path_factory.mktemp("slow")
    return write_zarr(tiny_cube(n_time=24, ny=32, nx=32, seed=5), root / "cube.zarr")


@pytest.fixture(scope="module")
def slow_reference(slow_cube, tmp_path_factory):
    """The embedding of ``slow_cube`` by one uninterrupted run with CHUNKS."""
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    res = runner.invoke(app, ["embed", str(slow_cube), "--out", str(ref), *CHUNKS])
    assert res.exit_code == 0, res.output
    return ref


def _assert_same_embedding(path: Path, ref: Path) -> None:
    from latentcube.inference import open_embedding

    got, want = open_embedding(path), open_embedding(ref)
    np.testing.assert_allclose(got["embedding"].values, want["embedding"].values, atol=1e-6)
    np.testing.assert_array_equal(got["sensors"].values, want["sensors"].values)


def test_overwrite_keeps_the_old_store_when_the_new_run_is_killed(
    slow_cube, slow_reference, tmp_path
):
    out = tmp_path / "e.zarr"
    res = runner.invoke(app, ["embed", str(slow_cube), "--out", str(out), *ONE_CHUNK,
                              "--hide", "s1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    before = snapshot(out, slow_cube)
    proc = _embed_process(slow_cube, out, "--overwrite")
    _wait_for(lambda: len(_markers(tmp_path)) >= 2, proc, "the replacement wrote chunks")
    _kill(proc)
    assert snapshot(out, slow_cube) == before  # the old store is intact
    # the same command again completes the replacement and swaps it in
    res = runner.invoke(app, ["embed", str(slow_cube), "--out", str(out), "--overwrite", *CHUNKS])
    assert res.exit_code == 0, res.output
    assert snapshot(out) != before
    _assert_same_embedding(out, slow_reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".e.zarr.lock",
        "e.zarr",
        "e.zarr.stac-item.json",
    ]


def test_a_second_run_into_the_same_output_is_refused_while_the_first_runs(slow_cube, tmp_path):
    out = tmp_path / "e.zarr"
    before = snapshot(slow_cube)
    proc = _embed_process(slow_cube, out)
    try:
        _wait_for(lambda: (out / "zarr.json").exists(), proc, "the first run started writing")
        res = runner.invoke(app, ["embed", str(slow_cube), "--out", str(out), *CHUNKS])
        refused(res, str(out), "in use")
        assert proc.poll() is None  # the first run goes on
    finally:
        _kill(proc)
    assert snapshot(slow_cube) == before


def test_completeness_is_read_from_the_store_not_from_the_markers_folder(
    slow_cube, slow_reference, tmp_path
):
    """A killed run whose markers folder was deleted is unfinished: run again, it completes."""
    import shutil

    out = tmp_path / "e.zarr"
    proc = _embed_process(slow_cube, out)
    _wait_for(lambda: len(_markers(tmp_path)) >= 2, proc, "the run wrote chunks")
    _kill(proc)
    shutil.rmtree(tmp_path / ".e.zarr.progress")
    res = runner.invoke(app, ["embed", str(slow_cube), "--out", str(out), *CHUNKS])
    assert res.exit_code == 0, res.output
    assert "complete embedding store" not in res.output
    _assert_same_embedding(out, slow_reference)


# -- (d) cubes and options on which nothing can be embedded ---------------------------


@pytest.mark.parametrize(
    ("shape", "why"),
    [((14, 10, 10), "10 x 10 px, smaller than the 15 x 15 px context"),
     ((8, 24, 24), "8 dates, fewer than the 11-date context")],
)  # fmt: skip
def test_a_cube_smaller_than_the_context_is_refused(tmp_path, shape, why):
    n_time, ny, nx = shape
    cube = write_zarr(tiny_cube(n_time=n_time, ny=ny, nx=nx, seed=2), tmp_path / "small.zarr")
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(cube), "--out", str(tmp_path / "e.zarr")])
    refused(res, str(cube), why)
    assert snapshot(tmp_path) == before


def test_a_20m_cube_is_refused_by_a_10m_model(tmp_path):
    c = tiny_cube(n_time=14, ny=24, nx=24, seed=2)
    c = c.assign_coords(x=500010.0 + 20 * np.arange(24), y=5600010.0 - 20 * np.arange(24))
    cube = write_zarr(c, tmp_path / "c20.zarr")
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(cube), "--out", str(tmp_path / "e.zarr")])
    refused(res, str(cube), "resolution is 20 m, the model needs 10 m")
    assert snapshot(tmp_path) == before


def test_hiding_every_sensor_is_refused(cube_path, tmp_path):
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(cube_path), "--out", str(tmp_path / "e.zarr"),
                              "--hide", "s2", "--hide", "s1"])  # fmt: skip
    refused(res, str(cube_path), "every sensor")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_a_worker_count_below_one_is_refused(cube_path, tmp_path, workers):
    before = snapshot(tmp_path)
    res = runner.invoke(app, ["embed", str(cube_path), "--out", str(tmp_path / "e.zarr"),
                              "--workers", workers, "--no-progress"])  # fmt: skip
    refused(res, f"workers must be a positive integer, got {workers}")
    assert snapshot(tmp_path) == before

"""The analysis commands as a user runs them: summarise, change, similar on a store."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis_data import synthetic_embedding
from latentcube.analysis import change, similar, summarise
from latentcube.cli import app
from latentcube.io import open_zarr, write_zarr

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "emb.zarr"
    write_zarr(synthetic_embedding(), path)
    return path


def test_summarise_writes_what_the_library_computes(store, tmp_path):
    out = tmp_path / "s.zarr"
    res = runner.invoke(
        app, ["summarise", str(store), "--window", "2019-01-01/2020-12-31", "--every", "1Y",
              "--stat", "median", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    got = open_zarr(out).load()
    want = summarise(open_zarr(store), "2019-01-01/2020-12-31", every="1Y", stat="median")
    assert got.sizes["window"] == 2 and got.rio.crs == open_zarr(store).rio.crs
    for name in want.data_vars:
        np.testing.assert_allclose(got[name].values, want[name].values, equal_nan=True)
    res = runner.invoke(app, ["summarise", str(store), "--out", str(out)])
    assert res.exit_code == 2 and "exists" in res.output  # no silent overwrite


def test_summarise_png_draws_each_window(store, tmp_path):
    """``--png``: one column per window (two yearly windows are drawn wider than one),
    and a PNG path that is the input store is refused before anything is written."""
    import matplotlib.image as mpimg

    sizes = {}
    for every in ("1Y", None):
        out, png = tmp_path / f"s{every}.zarr", tmp_path / f"s{every}.png"
        args = ["summarise", str(store), "--window", "2019-01-01/2020-12-31", "--out", str(out),
                "--png", str(png)] + (["--every", every] if every else [])  # fmt: skip
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        sizes[every] = mpimg.imread(png).shape
    assert sizes["1Y"][1] > sizes[None][1] and sizes["1Y"][0] == sizes[None][0]
    before = sorted(p.name for p in store.rglob("*"))
    res = runner.invoke(
        app, ["summarise", str(store), "--out", str(tmp_path / "x.zarr"), "--png", str(store)]
    )
    assert res.exit_code == 2 and "error:" in res.output
    assert sorted(p.name for p in store.rglob("*")) == before
    assert not (tmp_path / "x.zarr").exists()


def test_change_between_periods_and_png(store, tmp_path):
    out, png = tmp_path / "c.zarr", tmp_path / "c.png"
    args = ["change", str(store), "--before", "2018-01-01/2018-12-31", "--after",
            "2020-01-01/2020-12-31", "--out", str(out), "--png", str(png)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    want = change(open_zarr(store), "2018-01-01/2018-12-31", "2020-01-01/2020-12-31")
    np.testing.assert_allclose(
        open_zarr(out)["euclidean"].values, want["euclidean"].values, equal_nan=True
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["change", str(store), "--anomaly", "--out", str(tmp_path / "a.zarr")])
    assert res.exit_code == 0, res.output


def test_similar_to_an_example_pixel(store, tmp_path):
    ds = open_zarr(store)
    x, y = float(ds.x[2]), float(ds.y[3])
    out = tmp_path / "sim.zarr"
    res = runner.invoke(app, ["similar", str(store), "--point", f"{x},{y}", "--out", str(out)])
    assert res.exit_code == 0, res.output
    want = similar(ds, points=[(x, y)])
    name = next(iter(want.data_vars))
    np.testing.assert_allclose(open_zarr(out)[name].values, want[name].values, equal_nan=True)


@pytest.mark.bad_inputs
def test_bad_analysis_inputs_are_one_line_errors(store, tmp_path):
    cases = [
        (["summarise", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o.zarr")],
         "not found"),
        (["summarise", str(store), "--out", str(store / "inside.zarr")], "is inside the input"),
        (["summarise", str(store), "--out", str(store), "--overwrite"], "is the input"),
        (["change", str(store), "--out", str(tmp_path / "c.zarr")], "--before and --after"),
        (["similar", str(store), "--point", "a,b", "--out", str(tmp_path / "s.zarr")],
         "--point takes"),
    ]  # fmt: skip
    before = sorted(p.name for p in store.rglob("*"))
    for args, msg in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert msg in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in store.rglob("*")) == before

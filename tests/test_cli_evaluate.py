"""``latentcube evaluate ...`` commands on generated inputs and the bundled demo cube."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.evaluation.baselines import INDICES
from test_flux import write_fullset

from conftest import spy

runner = CliRunner()


def test_evaluate_help_lists_tasks():
    res = runner.invoke(app, ["evaluate", "--help"])
    assert res.exit_code == 0
    for task in ("gpp", "landcover", "croptype", "reconstruction"):
        assert task in res.output


def test_evaluate_gpp_on_fullset_file(tmp_path):
    days = pd.date_range("2017-01-01", "2019-12-31")
    rng = np.random.default_rng(0)
    gpp = 5 + 4 * np.sin(2 * np.pi * (days.dayofyear.to_numpy() - 100) / 365)
    gpp = gpp + rng.normal(0, 0.3, len(days))
    f = write_fullset(
        tmp_path / "FLX_XX-Gen_FLUXNET2015_FULLSET_DD_2017-2019_beta-3.csv",
        gpp,
        np.ones(len(days)),
        start="2017-01-01",
    )
    out = tmp_path / "rep"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "gpp",
            "--flux",
            str(f),
            "--lat",
            "50",
            "--out",
            str(out),
            "--test-years",
            "2019",
            "--n-trials",
            "1",
            "--max-epochs",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "climatology" in res.output and "potential radiation" in res.output
    data = json.loads((out / "results.json").read_text())["gpp"]
    assert data["split"] == {"type": "years", "test_years": [2019]}
    assert data["sites"] == ["XX-Gen"]
    # the synthetic seasonal cycle repeats: the climatology is close to the truth
    assert data["scores"]["climatology"]["mean seasonal cycle"]["overall"]["rmse"] < 0.6
    assert (out / "figures" / "gpp_series_XX-Gen.png").exists()


def test_evaluate_reconstruction_on_demo_cube(tmp_path):
    import torch

    from latentcube.bundle import save_checkpoint
    from latentcube.cube.readers import demo_cube_path
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig

    torch.manual_seed(0)
    ck = save_checkpoint(
        tmp_path / "m.pt", build_autoencoder(AutoencoderConfig.preset("tiny", "s2"))
    )
    res = runner.invoke(
        app,
        [
            "evaluate",
            "reconstruction",
            str(demo_cube_path()),
            "--model",
            str(ck),
            "--out",
            str(tmp_path / "rec"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "persistence" in res.output and (tmp_path / "rec" / "report.md").exists()


def test_evaluate_bad_inputs(tmp_path):
    res = runner.invoke(
        app, ["evaluate", "gpp", "--flux", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "not found" in res.output
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    rep = str(tmp_path / "rep")  # a report folder may not contain its inputs
    res = runner.invoke(app, ["evaluate", "gpp", "--flux", str(junk), "--out", rep])
    assert res.exit_code == 2 and "neither a FULLSET_DD" in res.output
    from latentcube.cube.readers import demo_cube_path

    res = runner.invoke(
        app, ["evaluate", "landcover", str(demo_cube_path()), "--out", str(tmp_path / "lc")]
    )
    assert res.exit_code == 2 and "landcover" in res.output


def without_run_details(obj):
    """A results.json without what differs between two runs: time stamps, paths, seconds."""
    if isinstance(obj, dict):
        return {
            k: without_run_details(v)
            for k, v in obj.items()
            if k not in {"written", "command", "seconds"}
        }
    if isinstance(obj, list):
        return [without_run_details(v) for v in obj]
    return obj


def test_evaluate_gpp_with_cube_model_and_baselines(tmp_path):
    """The whole --cube path: embed with a checkpoint, add every baseline, same windows."""
    import torch

    from latentcube.bundle import save_checkpoint
    from latentcube.cube.schema import make_cube, provenance
    from latentcube.io import write_zarr
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig
    from latentcube.sensors import S2_BANDS

    rng = np.random.default_rng(0)
    t = pd.date_range("2019-01-01", "2020-12-31", freq="12D")
    season = 0.5 + 0.4 * np.sin(2 * np.pi * (t.dayofyear.to_numpy() - 100) / 365)
    s2 = (
        0.1
        + 0.3 * season[:, None, None, None] * np.linspace(0.5, 1.5, 10)[None, :, None, None]
        + rng.normal(0, 0.01, (len(t), 10, 16, 16))
    ).astype(np.float32)
    cube = make_cube(
        np.clip(s2, 0, 1),
        rng.random((len(t), 16, 16)) > 0.1,
        time=t.values,
        y=5600005.0 - 10 * np.arange(16),
        x=500005.0 + 10 * np.arange(16),
        crs="EPSG:32631",
        bands=S2_BANDS,
        attrs=provenance("generated"),
    )
    store = write_zarr(cube, tmp_path / "cube.zarr")
    torch.manual_seed(0)
    ck = save_checkpoint(
        tmp_path / "m.pt", build_autoencoder(AutoencoderConfig.preset("tiny", "s2"))
    )
    days = pd.date_range("2019-01-01", "2020-12-31")
    gpp = 1 + 8 * (0.5 + 0.4 * np.sin(2 * np.pi * (days.dayofyear.to_numpy() - 100) / 365))
    f = write_fullset(
        tmp_path / "FLX_XX-Cub_FLUXNET2015_FULLSET_DD_2019-2020_beta-3.csv",
        gpp,
        np.ones(len(days)),
        start="2019-01-01",
    )
    fixed = "--lat 50 --test-years 2020 --n-trials 2 --max-epochs 1 --time-budget 0"
    runs = []
    for out in (tmp_path / "rep", tmp_path / "again"):
        paths = ["--flux", str(f), "--cube", str(store), "--model", str(ck), "--out", str(out)]
        opts = [*fixed.split(), "--models", "transformer,gbr", "--name", "tiny latents"]
        res = runner.invoke(app, ["evaluate", "gpp", *paths, *opts])
        assert res.exit_code == 0, res.output
        runs.append(json.loads((out / "results.json").read_text()))
    # one command with a fixed seed reproduces every number (timings and paths aside)
    assert without_run_details(runs[0]) == without_run_details(runs[1])
    data = runs[0]["gpp"]
    assert set(data["scores"]) == {
        "climatology",
        "potential radiation",
        "tiny latents",
        "S2 bands",
        "NDVI",
        "EVI",
        "NIRv",
        "kNDVI",
        "indices (4)",
        "PCA-7",
    }
    n = {s["overall"]["n"] for by in data["scores"].values() for s in by.values()}
    assert n == {data["n_windows"]["test"]}  # every set scored on the same test windows
    assert data["feature_sets"]["PCA-7"] == [f"PCA-7:PC{i}" for i in range(1, 8)]


def crop_worldcereal_patch(src, dst, size=32):
    """Copy a WorldCereal patch folder cut to its first ``size`` x ``size`` 10 m pixels."""
    import xarray as xr

    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.nc")):
        if f.name.startswith("AgERA5"):
            continue
        k = 2 if "_20m_" in f.name else 1  # each 20 m pixel covers 2 x 2 pixels of 10 m
        with xr.open_dataset(f, mask_and_scale=False) as d:
            c = d.isel(y=slice(0, size // k), x=slice(0, size // k)).load()
        for v in c.variables.values():
            v.attrs.pop("bounds", None)  # the uncut patch's bounding box
        c.to_netcdf(dst / f.name)
    return dst


def test_evaluate_croptype_on_cut_real_patches_with_the_shipped_model(tmp_path, shared):
    """The command end to end on two real patches cut to 32 x 32 px (4 blocks each).

    So few blocks leave inner folds whose training blocks hold one class only, which
    the inner search must skip (it used to fail there).
    """
    from latentcube.bundle import default_model_path
    from latentcube.cube.readers import read_worldcereal_labels

    names = ("00002806639B424A", "0000280849BAC91C")
    folders = [
        crop_worldcereal_patch(
            shared.path("worldcereal_s1_s2_training_patches_flanders", n), tmp_path / n
        )
        for n in names
    ]
    out = tmp_path / "ct"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "croptype",
            *map(str, folders),
            "--model",
            str(default_model_path()),
            "--name",
            "fused",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "report.md").exists() and (out / "figures" / "croptype_macro_f1.png").exists()
    data = json.loads((out / "results.json").read_text())["croptype"]
    assert data["seasons"] == [["2018-03-01", "2018-10-31"], ["2019-03-01", "2019-10-31"]]
    baselines = ["S2 bands", *INDICES, "indices (4)", "PCA-7", "S1 VV/VH", "PCA-7 + S1 VV/VH"]
    sets = ["fused", *baselines]
    assert set(data["scores"]) == {f"{s} / {k}" for s in sets for k in ("series", "season mean")}
    # the kept classes are labelled in the cut patches, and every kept one has >= 30 pixels
    labelled = np.concatenate([read_worldcereal_labels(f)["CT"].values.ravel() for f in folders])
    codes, counts = np.unique(labelled[labelled > 0], return_counts=True)
    kept = data["class_counts"]
    assert set(kept) <= {str(c) for c in codes} and len(kept) >= 2
    assert all(n >= 30 for n in kept.values()) and sum(kept.values()) == data["n_samples"]
    # classes under 30 labelled pixels in all can never be kept
    assert not set(kept) & {str(c) for c, n in zip(codes, counts, strict=True) if n < 30}
    for s in data["scores"].values():
        for probe in ("logreg", "knn"):
            assert 0 <= s[probe]["macro_f1"] <= 1
            assert len(s[probe]["chosen"]) == min(5, data["n_blocks"])  # one per outer fold
    assert "fused / series" in res.output and "report:" in res.output


def striped_store(path, codes, s2_of_class, times, valid, crs, x0=500005.0, y0=5600005.0):
    """A generated S2 cube whose 16 px vertical stripes alternate between ``codes``.

    ``s2_of_class(code)`` gives the (time, band) reflectance of a class; returns the
    store, the class map and the pixel-centre coordinates.
    """
    from latentcube.cube.schema import make_cube, provenance
    from latentcube.io import write_zarr
    from latentcube.sensors import S2_BANDS

    rng = np.random.default_rng(0)
    n = 48
    classes = np.array(codes)[(np.arange(n) // 16) % 2][None, :].repeat(n, 0)
    s2 = np.stack([s2_of_class(c) for c in codes])[(np.arange(n) // 16) % 2]  # (x, t, band)
    s2 = np.broadcast_to(s2.transpose(1, 2, 0)[:, :, None, :], (len(times), 10, n, n))
    s2 = np.clip(s2 + rng.normal(0, 0.01, s2.shape), 0, 1).astype(np.float32)
    x, y = x0 + 10 * np.arange(n), y0 - 10 * np.arange(n)
    cube = make_cube(
        s2,
        valid(rng, (len(times), n, n)),
        time=times.values,
        y=y,
        x=x,
        crs=crs,
        bands=S2_BANDS,
        attrs=provenance("generated"),
    )
    return write_zarr(cube, path), classes, x, y


def test_evaluate_croptype_on_any_cube_with_a_label_raster_and_a_season(tmp_path, monkeypatch):
    """A generated S2 cube and a 20 m GeoTIFF of parcel codes: the same command, any area."""
    from test_readers import write_labels

    t = pd.date_range("2020-02-01", "2020-11-30", freq="10D")
    doy = t.dayofyear.to_numpy()
    bands = np.linspace(0.2, 1.0, 10)

    def s2_of(code):  # the two crops green up at different times
        green = np.exp(-0.5 * ((doy - (150 if code == 11 else 220)) / 30) ** 2)
        return 0.05 + 0.3 * green[:, None] * bands[None, :]

    store, crop, x, y = striped_store(
        tmp_path / "cube.zarr",
        (11, 22),
        s2_of,
        t,
        lambda rng, shape: rng.random(shape) > 0.1,
        "EPSG:32631",
    )
    coarse = crop[::2, ::2].copy()
    coarse[:4] = 0  # the first 8 rows are not labelled
    lab = write_labels(tmp_path / "parcels.tif", coarse, x[::2] + 5, y[::2] - 5, nodata=0)
    out = tmp_path / "ct"
    args = ["evaluate", "croptype", str(store), "--labels", str(lab), "--out", str(out)]
    from latentcube.evaluation.cache import StepCache

    stored = spy(monkeypatch, StepCache, "put", lambda self, key, value: key)
    res = runner.invoke(app, [*args, "--season", "2020-04-01,2020-09-30"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())["croptype"]
    # every probe step was kept for a resume, and the cache went with the finished report
    assert len(stored) == len(data["scores"]) * 2 and not (out / ".probe-cache").exists()
    assert data["seasons"] == [["2020-04-01", "2020-09-30"]]  # not the default, Mar-Oct
    assert data["n_features"]["NDVI / series"] == 13  # 1 April + 12 steps of 15 days
    # every labelled pixel (rows 8-47, with >= 3 clear dates in the season) is a sample
    assert data["class_counts"] == {"11": 40 * 32, "22": 40 * 16}
    ndvi = data["scores"]["NDVI / series"]
    assert ndvi["logreg"]["macro_f1"] > 0.95  # the timing separates the crops
    # bad input is refused with the reason
    for extra, msg in [
        (["--season", "2020-10-31,2020-03-01"], "is not before"),
        (["--season", "spring"], "START,END dates"),
        (["--labels", str(lab)], "2 --labels for 1 cubes"),
    ]:
        res = runner.invoke(app, [*args, *extra])
        assert res.exit_code == 2 and msg in res.output, res.output


def test_evaluate_landcover_on_any_cube_with_a_worldcover_raster(tmp_path):
    """--labels gives the classes of a cube without a 'landcover' variable."""
    from test_readers import write_labels

    t = pd.date_range("2021-04-01", periods=8, freq="12D")

    def s2_of(code):  # tree cover darker than cropland
        return np.full((len(t), 10), 0.08 if code == 10 else 0.25) * np.linspace(0.5, 1.5, 10)

    store, cls, x, y = striped_store(
        tmp_path / "cube.zarr",
        (10, 40),
        s2_of,
        t,
        lambda rng, shape: np.ones(shape, bool),
        "EPSG:32632",
        x0=600005.0,
        y0=5500005.0,
    )
    coarse = cls[::2, ::2].copy()
    coarse[:, :2] = 255  # WorldCover's nodata
    wc = write_labels(
        tmp_path / "wc.tif",
        coarse,
        x[::2] + 5,
        y[::2] - 5,
        crs="EPSG:32632",
        nodata=255,
        dtype="uint8",
    )
    out = tmp_path / "lc"
    args = ["evaluate", "landcover", str(store), "--out", str(out), "--max-samples", "3000"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "no 'landcover' variable" in res.output
    res = runner.invoke(app, [*args, "--labels", str(wc)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())["landcover"]
    assert set(data["class_counts"]) == {"10", "40"} and data["n_samples"] == 3000
    assert data["scores"]["S2 bands"]["logreg"]["macro_f1"] > 0.95


def test_evaluation_embeds_with_the_shipped_fused_model():
    """``--model`` takes a fused bundle too: the 7-d embedding of each cube."""
    from latentcube.bundle import default_model_path
    from latentcube.cube.readers import load_demo_cube
    from latentcube.evaluation.runs import embedding_features as _embeddings

    cube = load_demo_cube().isel(time=slice(0, 12), y=slice(0, 20), x=slice(0, 20))
    out = _embeddings([cube], default_model_path(), None, "fused")
    (emb,) = out["fused"]
    assert emb.dims == ("feature", "time", "y", "x") and emb.shape == (7, 12, 20, 20)
    assert np.isfinite(emb.values[:, 5, 7:13, 7:13]).any()


def test_evaluate_landcover_repeats_reports_spread_and_paired_differences(tmp_path):
    """``--repeats``: mean ± sd per set, and the embedding paired with every baseline."""
    from latentcube.bundle import default_model_path
    from latentcube.cube.readers import load_demo_cube
    from latentcube.io import write_zarr

    cube = load_demo_cube().isel(time=slice(0, 12), y=slice(0, 48), x=slice(0, 48)).load()
    lab = np.where(np.arange(48) // 8 % 2, 10, 40)[None, :].repeat(48, 0)  # both in every block
    cube["landcover"] = (("y", "x"), lab.astype(np.uint8))
    write_zarr(cube, tmp_path / "lc.zarr")
    args = ["evaluate", "landcover", str(tmp_path / "lc.zarr"), "--out", str(tmp_path / "r")]
    args += ["--model", str(default_model_path()), "--name", "emb", "--max-samples", "500"]
    res = runner.invoke(app, [*args, "--repeats", "2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert " ± " in res.output
    out = json.loads((tmp_path / "r" / "results.json").read_text())["landcover"]
    assert out["repeats"] == 2
    assert out["scores"]["emb"]["knn"]["fold_seeds"] == [3, 4]
    assert set(out["paired"]["emb"]) == set(out["scores"]) - {"emb"}
    assert "Embeddings against every other set" in (tmp_path / "r" / "report.md").read_text()


def test_evaluation_with_a_model_reuses_its_embedding_after_a_kill(tmp_path, monkeypatch):
    """``--model``: each embedding is kept in ``<out>/.embed-cache`` as it is made, so a
    rerun after a kill during the probes embeds nothing again and reports the numbers
    of an uninterrupted run; the folder goes with the finished report."""
    import latentcube.evaluation.landcover as lc_module
    import latentcube.inference as inference
    from latentcube.bundle import default_model_path
    from latentcube.cube.readers import load_demo_cube
    from latentcube.io import write_zarr

    cube = load_demo_cube().isel(time=slice(0, 12), y=slice(0, 40), x=slice(0, 40)).load()
    cube["landcover"] = (("y", "x"), np.where(np.arange(40) // 8 % 2, 10, 40)[None].repeat(40, 0))
    write_zarr(cube, tmp_path / "lc.zarr")
    args = ["evaluate", "landcover", str(tmp_path / "lc.zarr"), "--max-samples", "400"]
    args += ["--model", str(default_model_path()), "--name", "emb"]
    calls = spy(monkeypatch, inference, "embed")

    class Killed(Exception):
        pass

    def killed(*a, **k):
        raise Killed

    run_landcover = lc_module.run_landcover
    monkeypatch.setattr(lc_module, "run_landcover", killed)
    out = tmp_path / "r"
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert isinstance(res.exception, Killed) and len(calls) == 1
    assert len(list((out / ".embed-cache").glob("*.zarr"))) == 1  # kept for the rerun
    monkeypatch.setattr(lc_module, "run_landcover", run_landcover)
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1 and not (out / ".embed-cache").exists()  # read, not embedded
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])  # uninterrupted
    assert res.exit_code == 0, res.output
    assert len(calls) == 2
    got, want = (
        json.loads((p / "results.json").read_text())["landcover"] for p in (out, tmp_path / "whole")
    )
    assert got["scores"] == want["scores"] and got["n_samples"] == want["n_samples"]


def test_cached_array_serves_only_the_same_inputs_and_recomputes_a_broken_store(tmp_path):
    """``cached_array``: the array read back equals the computed one; another cube or
    another model key is computed again, and so is a store that cannot be read."""
    import shutil

    import xarray as xr

    from latentcube.cube.readers import load_demo_cube
    from latentcube.evaluation.cache import StepCache, cached_array

    cube = load_demo_cube().isel(time=slice(0, 4), y=slice(0, 6), x=slice(0, 5)).load()
    calls = []

    def compute(c):
        calls.append(1)
        return (c["s2"].mean("band") * 2).rename("embedding")

    store = StepCache(tmp_path / "c", b"model bytes")
    first = cached_array(store, [cube], lambda: compute(cube))
    again = cached_array(store, [cube], lambda: compute(cube))
    assert len(calls) == 1
    xr.testing.assert_identical(again.drop_vars("spatial_ref"), first.drop_vars("spatial_ref"))
    other = cube.copy(deep=True)
    other["s2"][0, 0, 0, 0] = other["s2"][0, 0, 0, 0] + 0.01
    cached_array(store, [other], lambda: compute(other))
    cached_array(StepCache(tmp_path / "c", b"other model"), [cube], lambda: compute(cube))
    assert len(calls) == 3
    (path,) = [p for p in (tmp_path / "c").glob("*.zarr") if p.name.startswith(store.key(cube))]
    shutil.rmtree(path / "value")  # a store broken after it was written
    fixed = cached_array(store, [cube], lambda: compute(cube))
    assert len(calls) == 4
    np.testing.assert_array_equal(fixed.values, first.values)

"""The paper recipe end to end at toy scale, offline: sites from the local STAC catalog,
``tiny`` models, one epoch, GPP at two generated flux sites; resume and dry run."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.embedding_store import store_status
from latentcube.errors import RecipeError
from latentcube.io import open_zarr
from latentcube.recipe import STEPS, PaperRecipe, format_plan, load_rates, plan, run_recipe
from latentcube.recipe.cost import training_windows
from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, patch_dates, read_source
from test_flux import write_fullset

from conftest import shared_path, tiny_cube

runner = CliRunner()
FLUX_IDS = ("XX-Aaa", "XX-Bbb")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A catalog of the patch's whole record (2018-08 to 2019-11), flux files, flux sites."""
    folder = shared_path(FLANDERS, PATCH)
    s2, s1 = patch_dates(folder)
    root = tmp_path_factory.mktemp("inputs")
    catalog = make_catalog(root / "stac", read_source(folder, s2, s1), s2_dates=s2, s1_dates=s1)
    lon, lat = centre_lonlat()
    days = pd.date_range("2018-08-01", "2019-11-30")
    rng = np.random.default_rng(0)
    flux_dir = root / "flux"
    flux_dir.mkdir()
    for k, sid in enumerate(FLUX_IDS):
        gpp = 1 + 8 * (0.5 + 0.4 * np.sin(2 * np.pi * (days.dayofyear.to_numpy() - 100) / 365))
        gpp = gpp * (1 + 0.1 * k) + rng.normal(0, 0.2, len(days))
        name = f"FLX_{sid}_FLUXNET2015_FULLSET_DD_2018-2019_beta-3.csv"
        write_fullset(flux_dir / name, gpp, np.ones(len(days)), start="2018-08-01")
    table = root / "flux_sites.csv"
    pd.DataFrame({"id": FLUX_IDS, "lat": [lat, lat + 0.0008], "lon": [lon, lon - 0.001]}).to_csv(
        table, index=False
    )
    recipe = PaperRecipe.toy(
        catalog=str(catalog),
        sites={
            "region": (lon - 0.0015, lat - 0.001, lon + 0.0015, lat + 0.001),
            "years": (2019,),
        },
        flux={
            "table": str(table),
            "flux_dir": str(flux_dir),
            "start": "2018-08-01",
            "end": "2019-11-30",
        },
        gpp={"test_years": (2019,)},
    )
    return recipe, root


def _files(folder):
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.shared
def test_toy_recipe_end_to_end_resumes_after_a_failed_step_and_reruns_nothing(
    inputs, tmp_path, monkeypatch
):
    recipe, _root = inputs
    out = tmp_path / "run"

    # a step that dies: the steps before it are marked done, nothing after it ran
    import latentcube.training.fusion as fusion_module

    def killed(*args, **kwargs):
        raise RuntimeError("killed in fusion")

    real_fusion = fusion_module.fit_fusion
    monkeypatch.setattr(fusion_module, "fit_fusion", killed)
    with pytest.raises(RuntimeError, match="killed in fusion"):
        run_recipe(recipe, out)
    done = sorted(p.stem for p in (out / ".recipe").glob("*.json"))
    assert done == sorted(["sites", "train_cubes", "train_s2", "train_s1"])
    assert not (out / "models" / "fusion" / "best.pt").exists()
    assert not (out / "cubes" / "flux").exists()

    # rerun: resumes at the fusion step; the done steps' functions are not called again
    monkeypatch.setattr(fusion_module, "fit_fusion", real_fusion)
    import latentcube.cube.sites as sites_module
    import latentcube.training.stage1 as stage1_module

    calls = []
    real_build = sites_module.build_cubes
    monkeypatch.setattr(
        stage1_module, "fit_autoencoder", lambda *a, **k: calls.append("fit_autoencoder")
    )
    monkeypatch.setattr(
        sites_module,
        "build_cubes",
        lambda sites, folder, **k: calls.append(str(folder)) or real_build(sites, folder, **k),
    )
    ran = run_recipe(recipe, out)
    assert [s.name for s in STEPS] == list(ran)
    status = {k: v["status"] for k, v in ran.items()}
    assert status == {
        "sites": "skipped",
        "train_cubes": "skipped",
        "train_s2": "skipped",
        "train_s1": "skipped",
        "train_fusion": "done",
        "flux_cubes": "done",
        "embed": "done",
        "gpp": "done",
        "report": "done",
    }
    assert calls == [str(out / "cubes" / "flux")]  # only the flux cubes were built

    # every artefact
    sites = pd.read_csv(out / "sites.csv")
    assert len(sites) == 3 and set(sites["year"]) == {2019}
    man = pd.read_csv(out / "cubes" / "train" / "manifest.csv")
    assert list(man["status"]) == ["ok"] * 3
    for sid in man["id"]:
        cube = open_zarr(out / "cubes" / "train" / f"{sid}.zarr")
        assert cube.sizes["y"] == cube.sizes["x"] == 30 and "s1" in cube
    for stage in ("s2", "s1", "fusion"):
        assert (out / "models" / stage / "best.pt").is_file()
    for sid in FLUX_IDS:
        assert store_status(out / "embeddings" / f"{sid}.zarr")[0] == "complete"
        assert (out / "gpp" / sid / "results.json").is_file()
    report = (out / "report" / "report.md").read_text()
    assert "## GPP at the flux sites" in report
    # both sites pooled, leave-one-site-out, on the recipe's own embeddings
    pooled = pd.read_csv(out / "gpp" / "pooled" / "sites.csv")
    assert set(pooled["site"]) == set(FLUX_IDS) and set(pooled["split"]) == {"loso"}
    assert "## GPP pooled over the sites, leave-one-site-out" in report
    assert not (out / "gpp" / "pooled" / ".embed-cache").exists()  # nothing embedded again
    assert "| site | features | model | R2 | RMSE | NRMSE | bias | n |" in report

    # the report's RMSE per site is that of the site's own test predictions
    for sid in FLUX_IDS:
        res = json.loads((out / "gpp" / sid / "results.json").read_text())["gpp"]
        pred = res["test_predictions"]
        obs = np.asarray(pred["observed"])
        rmse = float(np.sqrt(np.mean((np.asarray(pred["embedding / gbr"]) - obs) ** 2)))
        row = re.search(rf"\| {sid} \| embedding \| gbr \| [-\d.]+ \| ([\d.]+) \|", report)
        assert row is not None, report
        assert float(row.group(1)) == pytest.approx(rmse, abs=1e-3)

    # a third run recomputes nothing and changes no file
    before = _files(out)
    again = run_recipe(recipe, out)
    assert {v["status"] for v in again.values()} == {"skipped"}
    assert _files(out) == before

    # other settings on the same folder are refused, naming the first step they change
    other = recipe.model_copy(update={"models": recipe.models.model_copy(update={"epochs": 2})})
    with pytest.raises(RecipeError, match=r"step train_s2 was done .* other settings"):
        run_recipe(other, out)
    # the flux files' folder matters to the GPP step and the report only
    moved = recipe.model_copy(
        update={"flux": recipe.flux.model_copy(update={"flux_dir": tmp_path / "elsewhere"})}
    )
    with pytest.raises(RecipeError, match=r"step gpp was done .* other settings"):
        run_recipe(moved, out)
    assert _files(out) == before


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    out = tmp_path / "never"
    res = runner.invoke(app, ["reproduce", "--dry-run", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for step in STEPS:
        assert step.name in res.output
    assert "500 cubes of 90 x 90 px" in res.output
    assert "not measured on a GPU" in res.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_plan_arithmetic_follows_the_rates():
    rates = load_rates()
    recipe = PaperRecipe.paper()
    steps = {s.name: s for s in plan(recipe, rates)}
    c = rates["cube"]
    px, dates = 90 * 90, 73
    kept = dates * c["kept_date_fraction"]
    read = 500 * px * (dates * c["scl_bytes_per_px"] + kept * c["s2_bytes_per_px"])
    read += 500 * px * 61 * c["s1_bytes_per_px"]
    assert steps["train_cubes"].read_gb == pytest.approx(read / 1e9)
    assert steps["train_cubes"].cpu_hours == pytest.approx(
        500 * px * dates * c["cpu_s_per_px_date"] / 3600
    )
    # twice the epochs, twice the steps and hours
    longer = {s.name: s for s in plan(PaperRecipe.paper(models={"epochs": 1000}), rates)}
    assert longer["train_s2"].steps == 2 * steps["train_s2"].steps
    assert longer["train_s2"].cpu_hours == pytest.approx(2 * steps["train_s2"].cpu_hours)
    assert steps["train_s2"].gpu_hours is None  # no GPU rate measured
    text = format_plan(list(steps.values()), rates, recipe)
    assert "n/m" in text


def test_training_windows_formula_counts_what_split_windows_cuts():
    from latentcube.data.windows import extract_windows

    cube = tiny_cube(n_time=29, ny=24, nx=27, seed=1, cloud_fraction=0.0)
    n = len(extract_windows(cube, "s2", mode="train", stride_t=3, stride_xy=3))
    # 24 x 27 px: 4 x 5 places; 29 dates: 4 time positions; all valid
    assert training_windows(24, 29, 1.0) == 4 * 4 * 4  # the square-cube formula at 24 px
    assert n == 4 * 5 * 4


def test_bad_recipe_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("models:\n  epochs: 0\n")
    res = runner.invoke(app, ["reproduce", str(bad), "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 2
    assert "models.epochs" in res.output and str(bad) in res.output
    assert not (tmp_path / "o").exists()

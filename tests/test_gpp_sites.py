"""``latentcube evaluate gpp --manifest``: GPP at many sites, end to end and on bad inputs.

The end-to-end test uses the real SE-Htm flux record, but **the imagery is not at the
tower**: both cubes are built from the local STAC catalog over a WorldCereal patch in
Flanders (tests/stac_catalog.py), published with its acquisition times moved 447 days
earlier so that the cubes overlap the flux record (2015-2018) across a year boundary.
The second site's flux record is the same SE-Htm record relabelled one year later. The
scores therefore mean nothing scientifically; the test checks the machinery: the
report's numbers against an independent computation, the splits, the skipped site and
the published reference.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_squared_error, r2_score
from typer.testing import CliRunner

from latentcube.cli import app
from latentcube.evaluation import gpp as gpp_module
from stac_catalog import FLANDERS, PATCH, centre_lonlat, make_catalog, read_source
from test_flux import write_fullset

from conftest import spy

runner = CliRunner()

#: Dates of the patch (2018-08 .. 2019-11) with a mostly clear SCL, spread over the period.
DATES = (
    "2018-08-04", "2018-08-19", "2018-10-13", "2018-10-18", "2018-11-02", "2018-11-17",
    "2018-11-22", "2018-12-12", "2018-12-17", "2019-01-21", "2019-02-15", "2019-02-25",
    "2019-03-07", "2019-03-22", "2019-04-01", "2019-04-11", "2019-04-16", "2019-04-21",
    "2019-05-06", "2019-05-11", "2019-05-16", "2019-06-10", "2019-06-20", "2019-06-30",
    "2019-07-05", "2019-07-20", "2019-07-25", "2019-07-30", "2019-08-24", "2019-10-13",
    "2019-10-18", "2019-10-28", "2019-11-22",
)  # fmt: skip
SHIFT_DAYS = -447  # the embedded dates (6th to 6th-last) straddle 1 January 2018
CFB = "GPP_NT_VUT_USTAR50"
FAST = "--seq-len 30 --stride 5 --n-trials 1 --max-epochs 2 --time-budget 0".split()


def _metrics(obs: pd.Series, pred: pd.Series) -> dict[str, float]:
    """R2, RMSE, NRMSE, bias, n by sklearn and numpy (independent of latentcube)."""
    o, p = obs.to_numpy(float), pred.to_numpy(float)
    rmse = float(np.sqrt(mean_squared_error(o, p)))
    return {
        "r2": r2_score(o, p),
        "rmse": rmse,
        "nrmse": rmse / o.mean(),
        "bias": float(np.mean(p - o)),
        "n": len(o),
    }


def _check_table(table: pd.DataFrame, pred: pd.DataFrame, by: list[str]) -> int:
    """Every row of ``table`` equals the metrics recomputed from the saved predictions."""
    checked = 0
    for key, g in pred.groupby(by):
        row = table.set_index(by).loc[key]
        for k, v in _metrics(g["observed"], g["predicted"]).items():
            assert row[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (key, k)
        checked += 1
    assert checked == len(table)
    return checked


def _se_htm_daily(folder) -> pd.Series:
    """Daily GPP (gC m-2 d-1) of the ICOS files, as the data README computes it."""
    parts = []
    for f in sorted(folder.glob("SE-Htm_*.csv")):
        df = pd.read_csv(f, skiprows=[1], na_values=[-9999], encoding="latin-1")
        end = pd.to_datetime(df["date"] + " " + df["time"].str.slice(0, 5), format="%d/%m/%Y %H:%M")
        parts.append(
            pd.Series(df["GPP_PI_1_1_1"].to_numpy(float), index=end - pd.Timedelta("30min"))
        )
    return pd.concat(parts).sort_index().resample("D").mean() * 12.011e-6 * 86400


@pytest.mark.shared
def test_many_sites_end_to_end_on_the_real_se_htm_record(tmp_path, shared, monkeypatch):
    """Two sites (real SE-Htm record; the same record a year later), one failed cube.

    The imagery is not at the tower (a Flanders patch, times shifted): the figures mean
    nothing scientifically.
    """
    from latentcube.bundle import default_model_path
    from latentcube.cube.sites import build_cubes

    src = read_source(shared.path(FLANDERS, PATCH), s2_dates=DATES, s1_dates=())
    cat = make_catalog(
        tmp_path / "stac", src, collections=("sentinel-2-l2a",), shift_days=SHIFT_DAYS
    )
    lon, lat = centre_lonlat()
    span = {"start": "2017-04-01", "end": "2018-10-31", "size_m": 300}
    table = pd.DataFrame(
        [
            {"id": "SE-Htm", "lat": lat, "lon": lon, **span},
            {"id": "XX-Htm", "lat": lat + 0.001, "lon": lon - 0.001, **span},
            {"id": "XX-Sea", "lat": lat + 1.0, "lon": lon, **span},  # outside the catalog
        ]
    )
    cubes = tmp_path / "cubes"
    man = build_cubes(
        table, cubes, scheduler="synchronous", catalog=str(cat), sensors=("s2",), progress=False
    )
    assert list(man["status"]) == ["ok", "ok", "failed"]

    icos = shared.path("icos_se_htm_halfhourly")
    flux = tmp_path / "flux"
    flux.mkdir()
    for f in icos.glob("SE-Htm_*.csv"):
        shutil.copy(f, flux / f.name)  # the real files, read as they are
    daily = _se_htm_daily(icos)
    write_fullset(  # the same record, relabelled one year later (2016-2019)
        flux / "FLX_XX-Htm_FLUXNET2015_FULLSET_DD_2016-2019_beta-3.csv",
        daily.to_numpy(),
        np.ones(len(daily)),
        start="2016-01-01",
    )
    sites = tmp_path / "sites.csv"
    sites.write_text("id,igbp\nXX-Htm,DBF\n")  # SE-Htm's class (ENF) comes from the registry
    steps = spy(monkeypatch, gpp_module, "_gpp_step", lambda w, n, m, tr, te, **kw: (w, tr, te))
    out = tmp_path / "report"
    cfb = shared.path("carbonfluxbench_gpp_results")
    args = ["evaluate", "gpp", "--manifest", str(cubes / "manifest.csv"), "--flux-dir",
            str(flux), "--sites", str(sites), "--model", str(default_model_path()),
            "--carbonfluxbench", str(cfb), "--models", "gbr,transformer", "--out", str(out),
            *FAST]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "warning: skipped XX-Sea: cube failed" in res.output

    # the failed cube is skipped and recorded
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped["site"]) == ["XX-Sea"]
    report = (out / "report.md").read_text()
    assert "## Skipped sites" in report and "XX-Sea" in report
    for f in ("results.json", "years/report.md", "loso/report.md", "predictions.csv"):
        assert (out / f).is_file(), f
    assert not (out / ".gpp-sites-cache").exists() and not (out / ".embed-cache").exists()

    # every number against sklearn on the saved predictions
    pred = pd.read_csv(out / "predictions.csv")
    assert set(pred["split"]) == {"years", "loso"}
    assert set(pred["features"]) >= {"embedding", "climatology", "S2 bands", "PCA-7", "NDVI"}
    n_sets = pred["features"].nunique() - 1  # the climatology is not fitted
    per_site = pd.read_csv(out / "sites.csv")
    assert _check_table(per_site, pred, ["split", "site", "features", "model"])
    assert _check_table(pd.read_csv(out / "pooled.csv"), pred, ["split", "features", "model"])
    igbp = pd.read_csv(out / "igbp.csv")
    assert set(igbp["igbp"]) == {"ENF", "DBF"}
    assert _check_table(igbp, pred, ["split", "igbp", "features", "model"])
    assert dict(zip(pred["site"], pred["igbp"], strict=False)) == {"SE-Htm": "ENF", "XX-Htm": "DBF"}

    # the targets are the real record: SE-Htm as it is, XX-Htm one year later
    obs = pred.drop_duplicates(["split", "site", "date"])
    day = pd.to_datetime(obs["date"])
    here = obs["site"] == "SE-Htm"
    np.testing.assert_allclose(obs["observed"][here], daily.loc[day[here]].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(
        obs["observed"][~here],
        daily.to_numpy()[(day[~here] - pd.Timestamp("2016-01-01")).dt.days.to_numpy()],  # day k
        rtol=1e-9,
    )

    # the splits: years tests 2018 at both sites; LOSO never trains on the held-out site
    years_calls, loso_calls = [], []
    for w, tr, te in steps:
        (loso_calls if len(set(w.site[te])) == 1 else years_calls).append((w, tr, te))
    assert len(years_calls) == n_sets * 2 and len(loso_calls) == n_sets * 2 * 2
    for w, tr, te in years_calls:
        assert set(pd.DatetimeIndex(w.end[te]).year) == {2018}
        assert 2018 not in set(pd.DatetimeIndex(w.end[tr]).year)
    held = []
    for w, tr, te in loso_calls:
        (site,) = set(w.site[te])
        assert site not in set(w.site[tr]) and len(tr) > 0
        held.append(site)
    assert sorted(set(held)) == ["SE-Htm", "XX-Htm"]
    assert set(pred[pred["split"] == "years"]["date"].str[:4]) == {"2018"}

    # the published reference: the median of SE-Htm's rows over every result file
    rows = pd.concat(pd.read_csv(f) for f in sorted(cfb.glob("*.csv")))
    rows = rows[(rows["site"] == "SE-Htm") & (rows["target"] == CFB)]
    per_site = per_site.set_index("site")
    assert per_site.loc["SE-Htm", "ref_r2_median"].iloc[0] == pytest.approx(rows["R2"].median())
    assert per_site.loc["SE-Htm", "ref_n"].iloc[0] == len(rows)
    assert per_site.loc["XX-Htm", "ref_r2_median"].isna().all()
    assert "## Published reference" in report


# ------------------------------------------------------------ generated sites (fast)


def _generated_sites(tmp_path, ids=("AA-One", "BB-Two")):
    """Small generated cubes with a seasonal signal, their manifest, FULLSET flux files.

    Also a third manifest row whose cube failed. IGBP classes come from a sites table.
    """
    from latentcube.cube.schema import make_cube, provenance
    from latentcube.io import write_zarr
    from latentcube.sensors import S2_BANDS

    cubes, flux = tmp_path / "cubes", tmp_path / "flux"
    flux.mkdir()
    t = pd.date_range("2019-01-01", "2020-12-31", freq="8D")
    days = pd.date_range("2019-01-01", "2020-12-31")
    rows = []
    for i, sid in enumerate(ids):
        rng = np.random.default_rng(i)
        season = 0.5 + 0.4 * np.sin(2 * np.pi * (t.dayofyear.to_numpy() - 100 - 9 * i) / 365)
        s2 = (
            0.1
            + 0.3 * season[:, None, None, None] * np.linspace(0.5, 1.5, 10)[None, :, None, None]
            + rng.normal(0, 0.01, (len(t), 10, 8, 8))
        ).astype(np.float32)
        cube = make_cube(
            np.clip(s2, 0, 1), rng.random((len(t), 8, 8)) > 0.1, time=t.values,
            y=5600005.0 - 10 * np.arange(8), x=500005.0 + 10 * np.arange(8),
            crs="EPSG:32631", bands=S2_BANDS, attrs=provenance("generated"),
        )  # fmt: skip
        write_zarr(cube, cubes / f"{sid}.zarr")
        gpp = 1 + 8 * (0.5 + 0.4 * np.sin(2 * np.pi * (days.dayofyear.to_numpy() - 110) / 365))
        write_fullset(
            flux / f"FLX_{sid}_FLUXNET2015_FULLSET_DD_2019-2020_beta-3.csv",
            gpp + rng.normal(0, 0.3, len(days)),
            np.ones(len(days)),
            start="2019-01-01",
        )
        rows.append({"id": sid, "status": "ok", "path": f"{sid}.zarr", "lat": 50.0 + i})
    rows.append({"id": "CC-Bad", "status": "failed", "path": "CC-Bad.zarr", "lat": 48.0,
                 "error": "CubeError: no S2 items"})  # fmt: skip
    pd.DataFrame(rows).to_csv(cubes / "manifest.csv", index=False)
    sites = tmp_path / "sites.csv"
    sites.write_text(
        "id,igbp\n" + "".join(f"{s},{g}\n" for s, g in zip(ids, ("GRA", "CRO"), strict=False))
    )
    return cubes / "manifest.csv", flux, sites


GEN = "--seq-len 30 --stride 10 --models gbr --test-years 2020".split()


def test_a_killed_run_resumes_without_refitting_what_was_done(tmp_path, monkeypatch):
    """Killed in its second split, a rerun refits only the missing steps, same numbers."""
    manifest, flux, sites = _generated_sites(tmp_path)
    base = ["evaluate", "gpp", "--manifest", str(manifest), "--flux-dir", str(flux),
            "--sites", str(sites), *GEN]  # fmt: skip
    fresh = tmp_path / "fresh"
    calls = spy(monkeypatch, gpp_module, "_gpp_step", lambda w, n, m, tr, te, **kw: n)
    res = runner.invoke(app, [*base, "--out", str(fresh)])
    assert res.exit_code == 0, res.output
    total = len(calls)
    n_sets = total // 3  # one years fit and two LOSO folds per feature set
    assert total == 3 * n_sets and n_sets >= 7

    real = gpp_module._gpp_step
    done = []

    def killed(*args, **kwargs):
        if len(done) == n_sets + 4:  # the years split and 4 LOSO fits are done
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(gpp_module, "_gpp_step", killed)
    res = runner.invoke(app, [*base, "--out", str(out)])
    assert res.exit_code == 130, res.output
    assert (out / ".gpp-sites-cache").is_dir() and not (out / "report.md").exists()

    monkeypatch.setattr(gpp_module, "_gpp_step", real)
    again = spy(monkeypatch, gpp_module, "_gpp_step", lambda w, n, m, tr, te, **kw: n)
    res = runner.invoke(app, [*base, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(again) == total - n_sets - 4  # nothing of the finished split, no LOSO fit twice
    assert not (out / ".gpp-sites-cache").exists()
    for name in ("predictions.csv", "sites.csv", "pooled.csv", "igbp.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(fresh / name))


def test_bad_inputs_are_one_line_errors(tmp_path):
    manifest, flux, sites = _generated_sites(tmp_path)
    base = ["evaluate", "gpp", "--manifest", str(manifest), "--out", str(tmp_path / "o"), *GEN]

    def fails(args, *expected):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert "\n" not in line and line.startswith("error:"), line
        for text in expected:
            assert text in line, line

    fails(base, "--manifest needs --flux-dir")
    fails([*base, "--flux-dir", str(flux), "--sites", str(sites), "--cube", str(manifest)],
          "takes no --cube")  # fmt: skip
    fails([*base, "--flux-dir", str(flux)], "row 2", "AA-One has no IGBP class")
    (flux / "FLX_BB-Two_FLUXNET2015_FULLSET_DD_2019-2020_beta-3.csv").unlink()
    fails([*base, "--flux-dir", str(flux), "--sites", str(sites)],
          "manifest.csv: row 3 (BB-Two)", "no flux record for site BB-Two")  # fmt: skip
    fails(["evaluate", "gpp", "--manifest", str(tmp_path / "none.csv"), "--flux-dir", str(flux),
           "--out", str(tmp_path / "o")], "none.csv: no such manifest")  # fmt: skip
    fails(["evaluate", "gpp", "--out", str(tmp_path / "o")], "give --flux")
    junk = flux / "FLX_BB-Two_FLUXNET2015_FULLSET_DD_2019-2020_beta-3.csv"
    junk.write_text("a,b\n1,2\n")
    fails([*base, "--flux-dir", str(flux), "--sites", str(sites)],
          f"site BB-Two: {junk.name}: neither a FULLSET_DD file")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_failed_cube_is_skipped_and_one_site_runs_the_years_split(tmp_path):
    manifest, flux, sites = _generated_sites(tmp_path, ids=("AA-One",))
    out = tmp_path / "o"
    args = ["evaluate", "gpp", "--manifest", str(manifest), "--flux-dir", str(flux),
            "--sites", str(sites), "--out", str(out), *GEN]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "leave-one-site-out needs at least two sites" in res.output
    with pytest.warns(UserWarning, match="CC-Bad: skipped"):
        from latentcube.evaluation.gpp_sites import evaluate_gpp_sites

        r = evaluate_gpp_sites(
            manifest, flux, out, split="years", sites=sites, test_years=[2020], seq_len=30,
            models=["gbr"], progress=False,
        )  # fmt: skip
    assert r["skipped"] == [{"site": "CC-Bad", "reason": "cube failed: CubeError: no S2 items"}]
    assert list(pd.read_csv(out / "skipped.csv")["site"]) == ["CC-Bad"]
    assert set(pd.read_csv(out / "sites.csv")["split"]) == {"years"}
    assert not (out / "loso").exists()


def test_find_flux_forms_and_ambiguity(tmp_path):
    from latentcube.errors import EvaluationError
    from latentcube.evaluation.gpp_sites import find_flux

    (tmp_path / "AA-Dir").mkdir()
    (tmp_path / "FLX_BB-Ful_FLUXNET2015_FULLSET_DD_2019-2020_beta-3.csv").write_text("x")
    for y in (2019, 2020):
        (tmp_path / f"CC-Hh_{y}.csv").write_text("x")
        (tmp_path / f"FLX_DD-Two_FLUXNET2015_FULLSET_DD_{y}-{y}_beta-3.csv").write_text("x")
    assert find_flux(tmp_path, "AA-Dir") == tmp_path / "AA-Dir"
    assert find_flux(tmp_path, "BB-Ful").name.startswith("FLX_BB-Ful_")
    assert find_flux(tmp_path, "CC-Hh") == tmp_path / "CC-Hh_*.csv"  # every year of the site
    with pytest.raises(EvaluationError, match="several FULLSET_DD files for DD-Two"):
        find_flux(tmp_path, "DD-Two")
    with pytest.raises(EvaluationError, match="no flux record for site EE-Non"):
        find_flux(tmp_path, "EE-Non")


def test_benchmark_scores_from_a_site_r2_rmse_csv(tmp_path):
    """The reference from a user's CSV: medians per site of the GPP rows only."""
    from latentcube.errors import EvaluationError
    from latentcube.evaluation.gpp_sites import benchmark_scores

    rows = pd.DataFrame(
        {
            "site": ["AA-One", "AA-One", "AA-One", "BB-Two", "AA-One"],
            "R2": [0.2, 0.6, 0.5, -0.3, 0.99],
            "RMSE": [2.0, 1.0, 1.5, 3.0, 0.1],
            "target": [CFB, CFB, CFB, CFB, "NEE_VUT_USTAR50"],
        }
    )
    rows.to_csv(tmp_path / "ref.csv", index=False)
    ref = benchmark_scores(tmp_path / "ref.csv")
    assert ref.loc["AA-One", "ref_r2_median"] == pytest.approx(0.5)
    assert ref.loc["AA-One", "ref_r2_best"] == pytest.approx(0.6)
    assert ref.loc["AA-One", "ref_rmse_median"] == pytest.approx(1.5)
    assert ref.loc["AA-One", "ref_n"] == 3 and ref.loc["BB-Two", "ref_n"] == 1
    rows.drop(columns="R2").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(EvaluationError, match=r"bad\.csv: needs the columns site, R2, RMSE"):
        benchmark_scores(tmp_path / "bad.csv")


def test_many_site_options_need_a_manifest(tmp_path):
    res = runner.invoke(
        app, ["evaluate", "gpp", "--flux", "x.csv", "--split", "loso", "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "--split need --manifest" in res.output

"""Land-cover probe and the blocked cross-validation it shares with the crop-type probe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.errors import EvaluationError
from latentcube.evaluation.landcover import landcover_probe, landcover_samples, run_landcover
from latentcube.evaluation.probes import (
    PARAM_GRIDS,
    block_ids,
    blocked_cv,
    filter_classes,
    tuned_probe,
)

from conftest import shared_path, spy


def fc(values, name):
    v = np.asarray(values, np.float32)
    return xr.DataArray(
        v,
        dims=("feature", "time", "y", "x"),
        coords={"time": pd.date_range("2021-05-01", periods=v.shape[1], freq="5D")},
        name=name,
    )


def spy_on(monkeypatch, name, note=lambda *args: args[0]):
    """Record ``note(*args)`` at every call of ``probes.<name>``, which still runs."""
    from latentcube.evaluation import probes

    return spy(monkeypatch, probes, name, note)


def blas_threads(*_args):
    """The thread counts of the loaded BLAS pools."""
    from threadpoolctl import threadpool_info

    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def labelled_scene(ny=64, nx=64, n_t=3, seed=0):
    """Four land-cover classes in vertical stripes; one informative and one noise feature set."""
    rng = np.random.default_rng(seed)
    lab = np.array([10, 30, 40, 50])[(np.arange(nx) * 4 // nx)][None, :].repeat(ny, 0)
    centre = {10: 0.0, 30: 1.0, 40: 2.0, 50: 3.0}
    good = np.stack(
        [np.vectorize(centre.get)(lab) + rng.normal(0, 0.2, (n_t, ny, nx)) for _ in range(2)]
    )
    noise = rng.normal(size=(2, n_t, ny, nx))
    good[:, 0, :5] = np.nan  # invalid pixel-dates are never sampled
    return {"good": fc(good, "good"), "noise": fc(noise, "noise")}, lab


def test_block_ids_and_class_filter():
    g = block_ids(np.array([0, 15, 16, 40]), np.array([0, 3, 0, 33]), 16)
    assert g[0] == g[1] and len(set(g.tolist())) == 3
    assert block_ids(np.array([0]), np.array([0]), 16, offset=10**9)[0] != g[0]
    keep, dropped = filter_classes(np.array([1] * 40 + [2] * 5), np.arange(45) % 3)
    assert keep.sum() == 40 and dropped == {"2": {"samples": 5, "blocks": 3}}


def test_probe_separates_informative_from_noise_features():
    sets, lab = labelled_scene()
    res = landcover_probe([sets], [lab], block=16, max_samples=3000, seed=0, tune=False)
    s = res["scores"]
    assert s["good"]["logreg"]["macro_f1"] > 0.95 and s["good"]["knn"]["macro_f1"] > 0.95
    assert s["noise"]["logreg"]["macro_f1"] < 0.45  # chance is 0.25
    assert set(res["classes"]) == {"10", "30", "40", "50"}
    assert res["n_blocks"] == 16 and res["n_samples"] == 3000
    assert set(s["good"]["logreg"]["per_class_f1"]) == {"10", "30", "40", "50"}


def test_inner_cv_uses_training_blocks_only_and_picks_from_the_grid():
    rng = np.random.default_rng(0)
    n = 240
    y = rng.integers(0, 2, n)
    x = np.c_[y + rng.normal(0, 0.7, n), rng.normal(size=(n, 3))]
    groups = rng.integers(0, 12, n)
    model, chosen = tuned_probe("logreg", x, y, groups, seed=0)
    assert chosen["C"] in PARAM_GRIDS["logreg"]["C"]
    assert model.steps[-1][1].C == chosen["C"]
    # with the grid reduced to one value the fitted model equals the untuned probe's
    m1, c1 = tuned_probe("knn", x, y, groups, grid={"n_neighbors": [7]})
    assert c1 == {"n_neighbors": 7}
    from latentcube.evaluation.probes import make_probe

    ref = make_probe("knn", n_neighbors=7).fit(x, y)
    np.testing.assert_array_equal(m1.predict(x), ref.predict(x))
    # the outer loop records the choice of every fold, made without its test blocks
    res = blocked_cv({"a": x}, y, groups, n_splits=3, seed=0)
    assert len(res["a"]["logreg"]["chosen"]) == 3
    knn = res["a"]["knn"]["chosen"]
    assert all(c["n_neighbors"] in PARAM_GRIDS["knn"]["n_neighbors"] for c in knn)


def test_inner_scores_match_scikit_learn_fitted_per_value():
    from sklearn.metrics import f1_score

    from latentcube.evaluation.probes import _inner_scores, make_probe

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    x = np.c_[y + rng.normal(0, 1.0, 300), rng.normal(size=(300, 2))]
    tr, va = np.arange(200), np.arange(200, 300)
    ks = [1, 4, 9]
    got = _inner_scores("knn", "n_neighbors", ks, x[tr], y[tr], x[va], y[va], 0)
    want = [
        f1_score(
            y[va],
            make_probe("knn", n_neighbors=k).fit(x[tr], y[tr]).predict(x[va]),
            average="macro",
        )
        for k in ks
    ]
    np.testing.assert_allclose(got, want)
    cs = [0.01, 1.0, 100.0]
    got = _inner_scores("logreg", "C", cs, x[tr], y[tr], x[va], y[va], 0)
    for solver_features in (3, None):  # Newton-Cholesky and L-BFGS
        want = []
        for c in cs:  # cold fits; the converged warm starts reach the same optimum
            m = make_probe("logreg", n_features=solver_features)
            m.set_params(logisticregression__C=c)
            want.append(f1_score(y[va], m.fit(x[tr], y[tr]).predict(x[va]), average="macro"))
        np.testing.assert_array_equal(got, want)


def test_logistic_probe_converges_to_one_optimum_whatever_the_start_and_solver():
    """The fit does not depend on where it starts: coefficients of a warm start from
    another C, a cold start, Newton-Cholesky and L-BFGS agree to 1e-6."""
    from latentcube.evaluation.probes import NEWTON_MAX_FEATURES, make_probe

    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 600)
    x = np.c_[y[:, None] * 0.3 + rng.normal(size=(600, 5)), rng.normal(size=(600, 40))]
    fits = []
    for n_features in (5, 45, None):
        m = make_probe("logreg", n_features=n_features)
        solver = m.steps[-1][1].solver
        assert solver == ("newton-cholesky" if n_features == 5 else "lbfgs")
        m.set_params(logisticregression__C=10.0)
        fits.append(m.fit(x, y).steps[-1][1].coef_)
    warm = make_probe("logreg", n_features=45).steps[-1][1].set_params(warm_start=True)
    for c in (0.01, 10.0):
        warm.set_params(C=c).fit((x - x.mean(0)) / x.std(0), y)
    fits.append(warm.coef_)
    for f in fits[1:]:
        np.testing.assert_allclose(f, fits[0], atol=1e-6)
    assert NEWTON_MAX_FEATURES < 45


def test_inner_cv_rejects_a_regularisation_that_kills_the_signal():
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 60))
    groups = np.arange(n) % 10
    x[:, 0] += 3 * y  # a tiny C shrinks this weight to ~0 and must lose
    _, chosen = tuned_probe("logreg", x, y, groups, seed=0, grid={"C": [1e-6, 1.0]})
    assert chosen == {"C": 1.0}


def test_inner_folds_with_one_training_class_are_skipped_and_outer_ones_refused(monkeypatch):
    """Small areas: an inner fold whose training blocks hold one class cannot rank C."""
    from sklearn.model_selection import GroupKFold

    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(4), 40)
    # class 1 lies in blocks 0 and 1 only: an inner fold holding out both trains on class 0
    y = (groups < 2).astype(int)
    x = np.c_[y + rng.normal(0, 0.5, len(y)), rng.normal(size=(len(y), 2))]
    splits = list(GroupKFold(n_splits=3, shuffle=True, random_state=0).split(x, y, groups))
    one_class = [len(np.unique(y[tr])) < 2 for tr, _ in splits]
    assert any(one_class) and not all(one_class)  # the case under test
    seen = spy_on(monkeypatch, "_inner_scores", lambda *a: len(np.unique(a[4])))  # y_tr
    for kind in ("logreg", "knn"):
        seen.clear()
        _, chosen = tuned_probe(kind, x, y, groups, seed=0)
        assert seen == [2] * one_class.count(False)  # only the folds with both classes
        ((param, value),) = chosen.items()
        assert value in PARAM_GRIDS[kind][param]
    # no usable inner fold (each of two blocks holds one class): the grid's middle value
    y2 = (groups == 0).astype(int)
    seen.clear()
    _, chosen = tuned_probe("logreg", x[:80], y2[:80], groups[:80], seed=0)
    assert seen == [] and chosen == {"C": PARAM_GRIDS["logreg"]["C"][2]}
    # an outer training fold of one class is refused with the reason
    with pytest.raises(EvaluationError, match=r"fold \d of 4 \(fold seed 0\).*only class"):
        blocked_cv({"a": x}, y2, groups, n_splits=4, seed=0)


def test_samples_common_validity_and_legend():
    sets, lab = labelled_scene(ny=32, nx=32)
    lab = lab.copy()
    lab[:, :2] = 35  # a half-way code from resampling: not in the legend
    f, y, g = landcover_samples(sets, lab, max_samples=10**6)
    assert not np.isin(y, [35]).any()
    n_valid = 3 * 32 * 30 - 5 * 30  # 3 dates, minus the NaN rows of date 0, minus 2 columns
    assert len(y) == n_valid == len(g) == len(f["noise"])
    assert np.isfinite(f["good"]).all()


def test_probe_input_errors():
    sets, lab = labelled_scene(ny=32, nx=32)
    with pytest.raises(EvaluationError, match="larger than the 15 px"):
        landcover_probe([sets], [lab], block=15)
    with pytest.raises(EvaluationError, match="shape"):
        landcover_samples(sets, lab[:10])
    with pytest.raises(EvaluationError, match="two spatial blocks"):
        blocked_cv({"a": np.zeros((4, 1))}, np.array([1, 2, 1, 2]), np.zeros(4))


@pytest.mark.shared
def test_real_greenearthnet_cube_baselines(tmp_path):
    from latentcube.cube.readers import open_cube

    path = sorted(shared_path("greenearthnet_replicated_minicubes").glob("JAS*.nc"))[0]
    cube = open_cube(path).load()
    res = run_landcover([cube], {}, tmp_path, max_samples=1500, seed=0, tune=False)
    assert "PCA-4" in res["scores"] and "kNDVI" in res["scores"]
    assert set(res["classes"]) <= {"10", "20", "30", "40", "50", "60"}
    # all reflectance bands carry more land-cover information than NDVI alone
    assert res["scores"]["S2 bands"]["knn"]["macro_f1"] > res["scores"]["NDVI"]["knn"]["macro_f1"]
    assert (tmp_path / "figures" / "landcover_macro_f1.png").exists()
    assert "| S2 bands |" in (tmp_path / "report.md").read_text()


def test_repeated_cv_repeat_r_equals_a_single_run_with_seed_plus_r():
    rng = np.random.default_rng(3)
    n = 360
    y = rng.integers(0, 3, n)
    groups = rng.integers(0, 18, n)
    x = {"a": np.c_[y + rng.normal(0, 1.0, n)], "b": np.c_[y + rng.normal(0, 2.0, n)]}
    single = blocked_cv(x, y, groups, n_splits=3, seed=7)
    assert "macro_f1_repeats" not in single["a"]["knn"]  # one repeat: output as before
    rep = blocked_cv(x, y, groups, n_splits=3, seed=7, repeats=3)
    for name in x:
        for kind in ("logreg", "knn"):
            runs = [blocked_cv(x, y, groups, n_splits=3, seed=7 + r)[name][kind] for r in range(3)]
            got = rep[name][kind]
            f1 = [r["macro_f1"] for r in runs]
            assert got["macro_f1_repeats"] == f1 and got["fold_seeds"] == [7, 8, 9]
            assert got["macro_f1"] == pytest.approx(sum(f1) / 3)
            assert got["macro_f1_sd"] == pytest.approx(np.std(f1, ddof=1))
            assert got["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in runs]))
            assert got["chosen"] == [c for r in runs for c in r["chosen"]]
            cls0 = next(iter(got["per_class_f1"]))
            assert got["per_class_f1"][cls0] == pytest.approx(
                np.mean([r["per_class_f1"][cls0] for r in runs])
            )
    # other fold assignments do change the score (the repeats are not copies)
    assert len(set(rep["b"]["knn"]["macro_f1_repeats"])) > 1
    with pytest.raises(EvaluationError, match="repeats"):
        blocked_cv(x, y, groups, repeats=0)


def test_paired_differences_by_hand():
    from latentcube.evaluation.probes import paired_differences

    scores = {
        "emb": {"knn": {"macro_f1": 0.5, "macro_f1_repeats": [0.50, 0.40, 0.60]}},
        "pca": {"knn": {"macro_f1": 0.5, "macro_f1_repeats": [0.45, 0.42, 0.63]}},
        "one": {"knn": {"macro_f1": 0.3}},
    }
    d = paired_differences(scores, "emb", ["pca"])["pca"]["knn"]
    # differences +0.05, -0.02, -0.03: mean 0, sd sqrt((0.05^2 + 0.02^2 + 0.03^2) / 2)
    assert d["mean"] == pytest.approx(0.0, abs=1e-12)
    assert d["sd"] == pytest.approx(np.sqrt(0.0038 / 2))
    assert (d["min"], d["max"]) == (pytest.approx(-0.03), pytest.approx(0.05))
    assert d["wins"] == 1 and d["repeats"] == 3
    with pytest.raises(EvaluationError, match="different repeats"):
        paired_differences(scores, "emb", ["one"])
    single = paired_differences({"a": scores["one"], "b": {"knn": {"macro_f1": 0.1}}}, "a")
    assert single["b"]["knn"]["mean"] == pytest.approx(0.2) and single["b"]["knn"]["sd"] == 0
    with pytest.raises(EvaluationError, match="unknown reference"):
        paired_differences(scores, "nope")


def test_repeated_probe_report_shows_spread_and_paired_differences(tmp_path):
    import json

    from latentcube.evaluation.probes import paired_differences
    from latentcube.evaluation.report import write_probe_report

    sets, lab = labelled_scene(ny=32, nx=48)
    res = landcover_probe([sets], [lab], block=16, max_samples=1200, seed=0, tune=False, repeats=3)
    assert res["repeats"] == 3
    res["paired"] = {"good": paired_differences(res["scores"], "good")}
    write_probe_report(res, tmp_path, "Land cover", "Synthetic.", seed=0)
    md = (tmp_path / "report.md").read_text()
    good = res["scores"]["good"]["knn"]
    assert f"{good['macro_f1']:.3f} ± {good['macro_f1_sd']:.3f}" in md
    assert "## Embeddings against every other set" in md
    assert "| good | noise | knn | +" in md and "3 of 3 |" in md
    saved = json.loads((tmp_path / "results.json").read_text())["landcover"]
    assert saved["scores"]["good"]["knn"]["macro_f1_repeats"] == good["macro_f1_repeats"]
    assert saved["paired"]["good"]["noise"]["knn"]["wins"] == 3


def test_probes_fit_with_one_blas_thread_by_default_and_score_the_same(monkeypatch):
    """``blocked_cv`` limits the BLAS/OpenMP pools while it fits (default 1 thread),
    restores them after, and ``threads=None`` leaves them alone; the scores agree."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    x = {"f": y[:, None] + rng.normal(0, 0.8, (180, 4))}
    groups = np.arange(180) % 6
    seen = spy_on(monkeypatch, "_blocked_cv_once", blas_threads)
    with threadpool_limits(limits=2):  # a process with more than one thread per pool
        default = blocked_cv(x, y, groups, seed=0)
        assert seen[-1] == {1}
        unlimited = blocked_cv(x, y, groups, seed=0, threads=None)
        assert seen[-1] == {2}
        assert blas_threads() == {2}
    for kind in ("logreg", "knn"):
        assert default["f"][kind]["macro_f1"] == pytest.approx(
            unlimited["f"][kind]["macro_f1"], abs=1e-9
        )
        assert default["f"][kind]["chosen"] == unlimited["f"][kind]["chosen"]
    with pytest.raises(EvaluationError, match="threads must be >= 1"):
        blocked_cv(x, y, groups, threads=0)


def test_tuned_probe_called_directly_also_fits_with_one_thread(monkeypatch):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 60)
    x = y[:, None] + rng.normal(0, 0.8, (120, 3))
    groups = np.arange(120) % 6
    seen = spy_on(monkeypatch, "_tuned_probe", blas_threads)
    with threadpool_limits(limits=2):
        _, one = tuned_probe("logreg", x, y, groups)
        _, kept = tuned_probe("logreg", x, y, groups, threads=None)
        blocked_cv({"f": x}, y, groups, seed=0, threads=None)  # passes its own setting on
    assert seen[0] == {1} and all(s == {2} for s in seen[1:]) and len(seen) > 2
    assert one == kept
    with pytest.raises(EvaluationError, match="threads must be >= 1"):
        tuned_probe("knn", x, y, groups, threads=0)


def test_blocked_cv_progress_bar_counts_every_set_probe_and_repeat(capsys):
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 60)
    x = {"a": y[:, None] + rng.normal(0, 0.8, (120, 2)), "b": rng.normal(size=(120, 2))}
    groups = np.arange(120) % 6
    quiet = blocked_cv(x, y, groups, seed=0, repeats=2, n_splits=3)
    assert capsys.readouterr().err == ""  # off by default
    shown = blocked_cv(x, y, groups, seed=0, repeats=2, n_splits=3, progress=True)
    err = capsys.readouterr().err
    assert "probes" in err and "8/8" in err  # 2 repeats x 2 sets x 2 probes
    assert shown == quiet


def probe_steps(n_sets=4, n=160, seed=3):
    """Generated samples for the cache tests: n_sets feature sets, 2 classes, 8 blocks."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    x = {f"s{i}": y[:, None] * (i + 1) / n_sets + rng.normal(0, 1, (n, 3)) for i in range(n_sets)}
    return x, y, np.arange(n) % 8


def test_blocked_cv_cache_serves_every_step_and_never_a_changed_one(tmp_path, monkeypatch):
    x, y, groups = probe_steps()
    kw = {"seed": 0, "repeats": 2, "tune": False, "n_splits": 3}
    plain = blocked_cv(x, y, groups, **kw)
    assert blocked_cv(x, y, groups, **kw, cache=tmp_path / "c") == plain
    entries = sorted((tmp_path / "c").glob("*.json"))
    assert len(entries) == 2 * 4 * 2  # repeats x sets x probes
    fits = spy_on(monkeypatch, "make_probe")
    assert blocked_cv(x, y, groups, **kw, cache=tmp_path / "c") == plain
    assert fits == []  # every step from the cache
    entries[0].unlink()
    entries[1].write_text('{"macro_f1": 0.5, "accu')  # cut short
    assert blocked_cv(x, y, groups, **kw, cache=tmp_path / "c") == plain
    assert len(fits) == 2 * 3  # two steps fitted again, each over its 3 outer folds
    # other labels, a changed set, another seed or setting: nothing served from the cache
    fits.clear()
    y2 = y.copy()
    y2[:5] = 1
    blocked_cv(x, y2, groups, **kw, cache=tmp_path / "c")
    blocked_cv({"s0": x["s0"] + 1e-9}, y, groups, **kw, cache=tmp_path / "c")
    blocked_cv({"s0": x["s0"]}, y, groups, **{**kw, "n_splits": 2}, cache=tmp_path / "c")
    assert len(fits) == (2 * 4 * 2 + 2 * 2) * 3 + 2 * 2 * 2


def test_blocked_cv_killed_mid_run_resumes_with_the_same_scores(tmp_path, monkeypatch):
    import os
    import pickle
    import signal
    import subprocess
    import sys
    import time

    x, y, groups = probe_steps(n_sets=6, n=80)
    data = tmp_path / "data.pkl"
    data.write_bytes(pickle.dumps((x, y, groups)))
    cache = tmp_path / "cache"
    kw = {"seed": 0, "repeats": 2, "n_splits": 3}
    script = (
        "import pickle; from latentcube.evaluation.probes import blocked_cv; "
        f"x, y, g = pickle.load(open({str(data)!r}, 'rb')); "
        f"blocked_cv(x, y, g, cache={str(cache)!r}, **{kw!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while len(list(cache.glob("*.json"))) < 4 and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("*.json")))
    assert 4 <= done < 2 * 6 * 2
    fits = spy_on(monkeypatch, "tuned_probe")
    resumed = blocked_cv(x, y, groups, **kw, cache=cache)
    assert len(fits) == (2 * 6 * 2 - done) * 3  # only the missing steps are fitted
    monkeypatch.undo()
    assert resumed == blocked_cv(x, y, groups, **kw)

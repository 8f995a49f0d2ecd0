"""analysis.similarity: cosine and whitened distance equal hand computations."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import latentcube  # noqa: F401  (registers the accessor)
from analysis_data import CountingScheduler, counted, synthetic_embedding
from latentcube.analysis.similarity import (
    plot_similarity,
    reference_vector,
    similar,
    whitening_matrix,
)
from latentcube.errors import EmbeddingError


@pytest.fixture(scope="module")
def ds():
    return synthetic_embedding()


def _valid_date(ds, iy, ix, k=5):
    return int(np.flatnonzero(counted(ds)[:, iy, ix])[k])


def test_reference_pixel_is_one_to_itself_and_cosine_matches(ds):
    iy, ix = 2, 3
    it = _valid_date(ds, iy, ix)
    x, y, t = float(ds["x"][ix]), float(ds["y"][iy]), ds["time"].values[it]
    res = similar(ds.chunk({"time": 11}), x=x + 3.0, y=y - 4.0, time=t, centre=False).compute()
    assert res["cosine"].dims == ("time", "y", "x")
    assert res["cosine"].values[it, iy, ix] == pytest.approx(1.0, abs=1e-6)
    assert res["distance"].values[it, iy, ix] == pytest.approx(0.0, abs=1e-5)
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    ref = emb[:, it, iy, ix]
    np.testing.assert_allclose(res["reference"].values, ref, rtol=1e-6)
    cos = np.einsum("ftyx,f->tyx", emb, ref) / (np.linalg.norm(emb, axis=0) * np.linalg.norm(ref))
    cos[~ok] = np.nan
    np.testing.assert_allclose(res["cosine"].values, cos, rtol=1e-5, atol=1e-6)
    centred = similar(ds, x=x, y=y, time=t).compute()  # the default: centred cosine
    assert centred["cosine"].values[it, iy, ix] == pytest.approx(1.0, abs=1e-6)


def test_whitened_distance_is_mahalanobis_by_the_valid_covariance(ds):
    iy, ix = 3, 1
    it = _valid_date(ds, iy, ix, 2)
    res = similar(
        ds, x=float(ds["x"][ix]), y=float(ds["y"][iy]), time=ds["time"].values[it]
    ).compute()
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    vecs = emb[:, ok].T
    cov = np.cov(vecs, rowvar=False, bias=True)
    prec = np.linalg.inv(cov)
    diff = emb - emb[:, it, iy, ix][:, None, None, None]
    d2 = np.einsum("ftyx,fg,gtyx->tyx", diff, prec, diff)
    ref = np.sqrt(d2)
    ref[~ok] = np.nan
    np.testing.assert_allclose(res["distance"].values, ref, rtol=1e-5, atol=1e-6)
    w = whitening_matrix(cov)
    np.testing.assert_allclose(w @ cov @ w.T, np.eye(cov.shape[0]), atol=1e-9)


def test_several_examples_use_the_mean_of_their_vectors(ds):
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    (y1, x1), (y2, x2) = (2, 2), (4, 1)
    t1 = _valid_date(ds, y1, x1, 1)
    pts = [
        (float(ds["x"][x1]), float(ds["y"][y1]), str(ds["time"].values[t1])[:19]),
        (float(ds["x"][x2]), float(ds["y"][y2])),  # no date: the mean of its valid dates
    ]
    ref = (emb[:, t1, y1, x1] + emb[:, ok[:, y2, x2], y2, x2].mean(1)) / 2
    np.testing.assert_allclose(reference_vector(ds, pts), ref, rtol=1e-6)
    res = ds.latentcube.similar(points=pts).compute()
    np.testing.assert_allclose(res["reference"].values, ref, rtol=1e-6)
    same = similar(ds, reference=ref).compute()
    np.testing.assert_allclose(same["cosine"].values, res["cosine"].values, rtol=1e-6)
    centred = similar(ds, reference=ref).compute()  # centred by default
    m = emb[:, ok].mean(1)
    a = emb - m[:, None, None, None]
    c = np.einsum("ftyx,f->tyx", a, ref - m) / (np.linalg.norm(a, axis=0) * np.linalg.norm(ref - m))
    c[~ok] = np.nan
    np.testing.assert_allclose(centred["cosine"].values, c, rtol=1e-5, atol=1e-6)


def test_lazy_one_compute_crs_kept_and_given_covariance(ds):
    src = ds.chunk({"time": 9, "y": 2})
    x, y = float(ds["x"][2]), float(ds["y"][2])
    sched = CountingScheduler()
    with dask.config.set(scheduler=sched):
        res = similar(src, x=x, y=y)  # the example pixel is read now (one compute)
        assert sched.calls == 1
        assert res["cosine"].chunks is not None and res["distance"].chunks is not None
        assert res["cosine"].chunksizes["y"] == (2, 2, 2)
        res.compute()
        assert sched.calls == 2
    assert res.rio.crs == ds.rio.crs
    np.testing.assert_array_equal(res["x"].values, ds["x"].values)
    eye = similar(ds, x=x, y=y, cov=np.eye(3)).compute()
    emb, ok = ds["embedding"].values.astype(np.float64), counted(ds)
    ref = emb[:, ok[:, 2, 2], 2, 2].mean(1)
    d = np.linalg.norm(emb - ref[:, None, None, None], axis=0)
    d[~ok] = np.nan
    np.testing.assert_allclose(eye["distance"].values, d, rtol=1e-5)


def test_refusals(ds):
    x, y = float(ds["x"][0]), float(ds["y"][0])
    with pytest.raises(EmbeddingError, match="no valid date"):
        similar(ds, x=x, y=y)  # pixel (0, 0) is never valid
    it = int(np.flatnonzero(~counted(ds)[:, 2, 2])[0])
    with pytest.raises(EmbeddingError, match="not valid on"):
        similar(ds, x=float(ds["x"][2]), y=float(ds["y"][2]), time=ds["time"].values[it])
    with pytest.raises(EmbeddingError, match="outside"):
        similar(ds, x=x - 1000, y=y)
    with pytest.raises(EmbeddingError, match="both x and y"):
        similar(ds, x=x)
    with pytest.raises(EmbeddingError, match="example pixel"):
        similar(ds)
    with pytest.raises(EmbeddingError, match="shape"):
        similar(ds, reference=[1.0, 2.0])


def test_figure(ds, tmp_path):
    res = similar(ds, x=float(ds["x"][2]), y=float(ds["y"][3]))
    rgb = np.full((ds.sizes["y"], ds.sizes["x"], 3), 0.3)
    out = plot_similarity(res, tmp_path / "sim.png", background=rgb, n_dates=3)
    assert out.read_bytes()[:4] == b"\x89PNG"
    plot_similarity(res, out, times=["2019-05-01"], overwrite=True)

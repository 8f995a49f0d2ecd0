"""Figures: PCA-RGB, true colour and the demo PNG."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from latentcube.plotting import pca_basis, pca_rgb, plot_demo, true_colour

from conftest import tiny_cube


def _embedding(seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(7, 5, 12, 10)).astype(np.float32)
    e[:, :, :2] = np.nan
    return e


def test_pca_rgb_range_nan_and_variance_order():
    e = _embedding()
    rgb = pca_rgb(e)
    assert rgb.shape == (5, 12, 10, 3)
    assert np.isnan(rgb[:, :2]).all()
    fin = rgb[:, 2:]
    assert np.isfinite(fin).all() and fin.min() >= 0 and fin.max() <= 1
    mean, comps = pca_basis(e)
    flat = e.reshape(7, -1).T
    flat = flat[np.isfinite(flat).all(1)] - mean
    var = (flat @ comps.T).var(0)
    assert var[0] >= var[1] >= var[2]
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-6)


def test_true_colour():
    cube = tiny_cube()
    rgb = true_colour(cube, 0)
    assert rgb.shape == (24, 20, 3)
    valid = cube["s2_valid"].values[0]
    assert np.isnan(rgb[~valid]).all() and np.isfinite(rgb[valid]).all()
    np.testing.assert_allclose(
        rgb[valid][:, 0], np.clip(3 * cube["s2"].sel(band="B04").values[0][valid], 0, 1)
    )


def test_plot_demo_writes_a_picture(tmp_path):
    cube = tiny_cube(n_time=5, ny=12, nx=10)
    path = plot_demo(cube, _embedding(), tmp_path / "demo.png")
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05

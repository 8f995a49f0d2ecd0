"""Context windows: vectorised extraction vs a loop reference, gaps, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube.data.windows import (
    CubeArrays,
    WindowDataset,
    Windows,
    block_regions,
    extract_windows,
    split_cubes,
)

from conftest import tiny_cube


@pytest.fixture(scope="module")
def cube():
    return tiny_cube(n_time=24, ny=30, nx=28, seed=5)


def test_batch_matches_loop_reference(cube):
    w = extract_windows(cube, "s2", mode="train", pool=20, stride_t=2, stride_xy=4, seed=1)
    assert len(w) > 10
    idx = np.arange(len(w))[::3]
    x, mask, gaps = w.batch(idx)
    s2 = cube["s2"].values
    valid = cube["s2_valid"].values
    days = cube["time"].values.astype("datetime64[D]").astype(np.int64)
    for k, i in enumerate(idx):
        ts, y0, x0 = w.t_idx[i], w.iy[i], w.ix[i]
        for a, t in enumerate(ts):
            np.testing.assert_array_equal(x[k, a], s2[t, :, y0 : y0 + 15, x0 : x0 + 15])
            np.testing.assert_array_equal(mask[k, a], valid[t, y0 : y0 + 15, x0 : x0 + 15])
        np.testing.assert_array_equal(gaps[k], np.diff(days[ts]))
        assert valid[ts[5], y0 + 7, x0 + 7]  # centre pixel valid at the centre date


def test_train_mode_draws_sorted_dates_from_pool(cube):
    w = extract_windows(cube, "s2", mode="train", pool=20, stride_t=4, seed=3)
    assert (np.diff(w.t_idx, axis=1) > 0).all()
    span = w.t_idx[:, -1] - w.t_idx[:, 0]
    assert span.max() <= 19 and span.max() > 10  # random gaps, not always consecutive
    w2 = extract_windows(cube, "s2", mode="train", pool=20, stride_t=4, seed=3)
    np.testing.assert_array_equal(w.t_idx, w2.t_idx)  # seeded


def test_consecutive_mode(cube):
    w = extract_windows(cube, "s2", mode="consecutive", stride_t=1, stride_xy=13)
    np.testing.assert_array_equal(np.diff(w.t_idx, axis=1), 1)


def test_long_gaps_are_dropped(cube):
    t = cube["time"].values.copy()
    t[12:] += np.timedelta64(300, "D")  # a 300-day hole in the middle
    w = extract_windows(cube.assign_coords(time=t), "s2", mode="consecutive", stride_t=1)
    assert len(w) > 0
    assert (w.gaps().sum(axis=1) < 200).all()
    crossing = (w.t_idx[:, 0] < 12) & (w.t_idx[:, -1] >= 12)
    assert not crossing.any()


def test_block_split_has_no_overlapping_footprints(cube):
    train_r, val_r = block_regions((30, 28), block_px=16, fractions=(0.5, 0.5), seed=0)
    assert not (train_r & val_r).any() and (train_r | val_r).all()
    tr = extract_windows(cube, "s2", region=train_r, stride_xy=1, stride_t=4)
    va = extract_windows(cube, "s2", region=val_r, stride_xy=1, stride_t=4)
    foot_tr = np.zeros((30, 28), bool)
    for y, x in zip(tr.iy, tr.ix, strict=True):
        foot_tr[y : y + 15, x : x + 15] = True
    for y, x in zip(va.iy, va.ix, strict=True):
        assert not foot_tr[y : y + 15, x : x + 15].any()
    assert len(tr) + len(va) > 0


def test_block_split_of_one_cube_never_leaves_validation_empty():
    """A side that is not a multiple of the block gave a 1-px strip of its own, and a
    validation split of strips alone held no window (131 px: 12 of 50 seeds)."""
    from latentcube.data.windows import _inside, split_windows

    for n in (131, 64, 97):
        block = max(16, n // 2)
        for seed in range(50):
            tr, va = block_regions((n, n), block, (0.75, 0.25), seed, merge_remainder=True)
            assert not (tr & va).any() and (tr | va).all()
            assert _inside(va, 15).any() and _inside(tr, 15).any(), (n, seed)
    old = [block_regions((131, 131), 65, (0.75, 0.25), s) for s in range(50)]
    assert sum(not _inside(va, 15).any() for _, va in old) == 12  # the strips it replaces
    # no remainder: the regions are those of the default (the shipped 64 px training split)
    for a, b in zip(
        block_regions((64, 64), 32, seed=42),
        block_regions((64, 64), 32, seed=42, merge_remainder=True),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # seed 42 of a 35 x 35 cube put only 1-px strips in validation before
    odd = tiny_cube(n_time=24, ny=35, nx=35, seed=7)
    assert not _inside(block_regions((35, 35), 17, (0.75, 0.25), 42)[1], 15).any()
    tr, va = split_windows([odd], "s2", seed=42, stride_xy=2, stride_t=4)
    assert len(tr) > 0 and len(va) > 0


def test_split_within_cubes_gives_every_cube_to_both_splits():
    """``within_cubes``: each cube split by its own blocks, as splitting each alone and
    joining the parts; whole cubes by default; the fusion split alike."""
    from latentcube.data.multisensor import split_fusion_windows
    from latentcube.data.windows import split_windows

    cubes = [tiny_cube(n_time=24, ny=35, nx=35, seed=s) for s in (1, 2)]
    tr, va = split_windows(cubes, seed=42, stride_xy=2, stride_t=4, within_cubes=True)
    alone = [split_windows([c], seed=42, stride_xy=2, stride_t=4) for c in cubes]
    for got, k in ((tr, 0), (va, 1)):
        want = Windows.concat([a[k] for a in alone])
        for f in ("cube_id", "t_idx", "iy", "ix"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
    assert set(tr.cube_id.tolist()) == {0, 1} == set(va.cube_id.tolist())
    tr, va = split_windows(cubes, seed=42, stride_xy=2, stride_t=4)
    assert len(set(tr.cube_id.tolist())) == 1 == len(set(va.cube_id.tolist()))
    ftr, fva = split_fusion_windows(
        cubes, ("s2", "s1"), seed=42, stride_xy=2, stride_t=4, within_cubes=True
    )
    for w in (ftr, fva):
        assert set(w.windows["s2"].cube_id.tolist()) == {0, 1}


def test_split_cubes_is_seeded_and_disjoint():
    a = split_cubes(range(100), seed=42)
    assert [len(g) for g in a] == [75, 17, 8]
    assert a == split_cubes(range(100), seed=42) and a != split_cubes(range(100), seed=1)
    assert set(a[0]).isdisjoint(a[1]) and set(a[1]).isdisjoint(a[2])
    sites = split_cubes(["A", "B", "C", "D"], fractions=(0.5, 0.5), seed=0)
    assert sorted(sites[0] + sites[1]) == ["A", "B", "C", "D"]


def test_concat_subset_and_dataset(cube):
    w1 = extract_windows(cube, "s2", stride_t=4, seed=0)
    w2 = extract_windows(tiny_cube(n_time=24, ny=30, nx=28, seed=6), "s2", stride_t=4, seed=0)
    both = Windows.concat([w1, w2])
    assert len(both) == len(w1) + len(w2)
    x, _, _ = both.batch(np.array([0, len(w1)]))
    np.testing.assert_array_equal(x[0], w1.batch(np.array([0]))[0][0])
    np.testing.assert_array_equal(x[1], w2.batch(np.array([0]))[0][0])
    item = WindowDataset(both.subset(np.array([1, 2])))[0]
    assert item["x"].dtype == torch.float32 and item["mask"].dtype == torch.bool
    assert item["gaps"].dtype == torch.int64 and item["x"].shape == (11, 10, 15, 15)


def test_s1_windows_use_s1_mask(cube):
    arr = CubeArrays.from_cube(cube, "s1")
    assert arr.data.shape[1] == 2
    w = extract_windows(arr, "s1", stride_t=4)
    assert w.batch(np.array([0]))[0].shape == (1, 11, 2, 15, 15)


def test_hide_entries_for_gap_filling():
    from latentcube.data.windows import hide_entries

    mask = np.ones((400, 11, 15, 15), bool)
    mask[:10, 5, 7, 7] = False  # already invalid centres are never "hidden"
    h = hide_entries(mask, np.random.default_rng(0), centre_prob=0.5, other_prob=0.1)
    assert not (h & ~mask).any()
    centre = h[:, 5, 7, 7]
    assert not centre[:10].any() and 0.4 < centre[10:].mean() < 0.6
    others = np.delete(h.reshape(400, -1), 5 * 225 + 7 * 15 + 7, axis=1)
    assert 0.09 < others.mean() < 0.11
    all_c = hide_entries(mask, np.random.default_rng(1), centre_prob=1.0)
    assert all_c[10:, 5, 7, 7].all() and all_c.sum() == 390  # nothing else hidden
    a = hide_entries(mask, np.random.default_rng(3), 0.5, 0.1)
    np.testing.assert_array_equal(a, hide_entries(mask, np.random.default_rng(3), 0.5, 0.1))

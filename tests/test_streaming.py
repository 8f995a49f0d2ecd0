"""Windows streamed from Zarr stores equal the in-memory windows; index, order, shards, workers."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from latentcube.cube.readers import demo_cube_path, open_cube
from latentcube.data import streaming
from latentcube.data.source import BatchStream, WindowSource, epoch_order, shard
from latentcube.data.streaming import StreamingWindows, build_index, store_fingerprint
from latentcube.data.windows import CubeArrays, Windows, extract_windows
from latentcube.io import write_zarr

from conftest import spy, tiny_cube

OPTS = [
    {"mode": "train", "stride_t": 3, "stride_xy": 3},
    {"mode": "consecutive", "stride_t": 2, "stride_xy": 4},
    {"mode": "train", "stride_t": 17, "stride_xy": 9, "max_windows": 40, "seed": 3},
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The demo cube (uint16 with scale, one chunk per band) and two tiny float32 cubes."""
    root = tmp_path_factory.mktemp("cubes")
    demo = root / "demo.zarr"
    with zipfile.ZipFile(demo_cube_path()) as z:
        z.extractall(demo)
    paths = [demo]
    for seed, chunks in ((1, (8, 12, 10)), (2, (5, 24, 20))):
        p = root / f"tiny{seed}.zarr"
        cube = tiny_cube(n_time=30, ny=24, nx=20, seed=seed, cloud_fraction=0.3)
        t, y, x = chunks
        enc = {"s2": {"chunks": (t, 10, y, x)}, "s2_valid": {"chunks": (t, y, x)}}
        write_zarr(cube, p, encoding=enc)
        paths.append(p)
    return paths


def _in_memory(paths, **opts):
    return Windows.concat(
        [extract_windows(CubeArrays.from_cube(open_cube(p)), **opts) for p in paths]
    )


@pytest.mark.parametrize("opts", OPTS)
def test_streamed_windows_equal_in_memory_windows(stores, tmp_path, opts):
    sw = StreamingWindows(stores, index_dir=tmp_path, **opts)
    mem = _in_memory(stores, **opts)
    assert len(sw) == len(mem) > 0
    np.testing.assert_array_equal(sw.t_idx, mem.t_idx)
    np.testing.assert_array_equal(sw.iy, mem.iy)
    np.testing.assert_array_equal(sw.ix, mem.ix)
    np.testing.assert_array_equal(sw.cube_id, mem.cube_id)
    for idx in (
        np.random.default_rng(0).permutation(len(sw))[:200],
        sw.epoch_order(1, 0)[:64],
        np.array([len(sw) - 1]),
    ):
        got, want = sw.batch(idx), mem.batch(idx)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)  # exact, NaN where NaN
        x, mask, _ = got
        assert np.isnan(x).all(axis=2)[~mask].all() and not np.isnan(x).any(axis=2)[mask].any()


def test_both_kinds_are_window_sources(stores, tmp_path):
    sw = StreamingWindows(stores[:1], index_dir=tmp_path)
    mem = _in_memory(stores[:1])
    assert isinstance(sw, WindowSource) and isinstance(mem, WindowSource)
    assert (sw.window, sw.n_dates) == (mem.window, mem.n_dates) == (15, 11)
    # the in-memory order is the permutation the training loop draws
    np.testing.assert_array_equal(
        epoch_order(mem, 5, 2), np.random.default_rng([5, 2]).permutation(len(mem))
    )


def test_band_selection(stores, tmp_path):
    sw = StreamingWindows(stores, index_dir=tmp_path, bands=["B04", "B08"])
    arrs = [CubeArrays.from_cube(open_cube(p), bands=["B04", "B08"]) for p in stores]
    mem = Windows.concat([extract_windows(a) for a in arrs])
    idx = np.arange(0, len(sw), 3)
    for g, w in zip(sw.batch(idx), mem.batch(idx), strict=True):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(Exception, match="no band"):
        StreamingWindows(stores, index_dir=tmp_path, bands=["B99"]).batch(np.array([0]))


def test_index_saved_reused_and_rebuilt(stores, tmp_path, monkeypatch):
    root = tmp_path / "c"
    root.mkdir()
    p = root / "tiny.zarr"
    write_zarr(tiny_cube(n_time=30, seed=4), p)
    scans = spy(monkeypatch, streaming, "_scan")
    first = StreamingWindows([p])
    files = list((root / ".latentcube-windows").glob("*.npz"))
    assert len(scans) == 1 and len(files) == 1  # saved beside the cube by default
    again = StreamingWindows([p])
    assert len(scans) == 1  # reused
    np.testing.assert_array_equal(first.t_idx, again.t_idx)
    StreamingWindows([p], stride_xy=5)
    assert len(scans) == 2  # other options: rebuilt
    fp = store_fingerprint(p)
    write_zarr(tiny_cube(n_time=30, seed=5, cloud_fraction=0.5), p, overwrite=True)
    assert store_fingerprint(p) != fp
    changed = StreamingWindows([p])
    assert len(scans) == 3  # the cube changed: rebuilt
    want = extract_windows(CubeArrays.from_cube(open_cube(p)))
    np.testing.assert_array_equal(changed.t_idx, want.t_idx)
    np.testing.assert_array_equal(changed.iy, want.iy)


def test_index_in_memory_when_folder_not_writable(stores, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="not saved"):
        idx = build_index(stores[1], streaming.WindowOptions(), index_dir=blocker / "sub")
    assert len(idx) > 0


def test_epoch_order_is_a_seeded_chunk_local_permutation(stores, tmp_path):
    sw = StreamingWindows(stores, index_dir=tmp_path, stride_t=2, stride_xy=2, mix=2)
    a = sw.epoch_order(7, 0)
    assert sorted(a.tolist()) == list(range(len(sw)))
    np.testing.assert_array_equal(a, sw.epoch_order(7, 0))
    assert not np.array_equal(a, sw.epoch_order(7, 1))
    assert not np.array_equal(a, sw.epoch_order(8, 0))
    # a batch of the chunk-local order touches few chunk blocks; a random one many
    local = np.mean([np.unique(sw.group[a[i : i + 32]]).size for i in range(0, len(a) - 32, 32)])
    r = np.random.default_rng(0).permutation(len(sw))
    rand = np.mean([np.unique(sw.group[r[i : i + 32]]).size for i in range(0, len(r) - 32, 32)])
    assert local <= 2 * 2 and rand > local


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_and_cover_each_epoch(stores, tmp_path, world):
    sw = StreamingWindows(stores, index_dir=tmp_path)
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world):
            s = BatchStream(sw, 16, seed=3, rank=rank, world=world)
            s.set_epoch(epoch)
            per_rank.append(np.concatenate(s.batches()))
            # the stream yields exactly the shards of batches()
            got = np.concatenate([b["index"].numpy() for b in s])
            np.testing.assert_array_equal(got, per_rank[-1])
        allidx = np.concatenate(per_rank)
        assert allidx.size == len(sw) == np.unique(allidx).size
        # each global batch is split as the training loop splits it
        order = epoch_order(sw, 3, epoch)
        s = BatchStream(sw, 16, seed=3, rank=world - 1, world=world)
        s.set_epoch(epoch)
        np.testing.assert_array_equal(s.batches()[1], shard(order[16:32], world - 1, world))


def test_stream_is_deterministic_per_seed_and_epoch(stores, tmp_path):
    sw = StreamingWindows(stores, index_dir=tmp_path)
    s = BatchStream(sw, 32, seed=1)
    first = [b["index"] for b in s]
    again = [b["index"] for b in BatchStream(sw, 32, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    s.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(first, [b["index"] for b in s], strict=False))


def test_dataloader_with_two_workers_gives_the_same_batches(stores, tmp_path):
    sw = StreamingWindows(stores, index_dir=tmp_path)
    sw.batch(np.arange(8))  # the parent has opened and read stores before the fork
    stream = BatchStream(sw, 24, seed=2)
    stream.set_epoch(1)
    plain = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0))
    workers = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    assert len(plain) == len(workers) == len(stream)
    for a, b in zip(plain, workers, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], equal_nan=True, rtol=0, atol=0)
    assert plain[0]["x"].shape[1:] == (11, 10, 15, 15)
    assert sw._readers  # the parent's handles are its own; the workers opened theirs


def test_open_stores_are_capped(stores, tmp_path):
    sw = StreamingWindows(stores, index_dir=tmp_path, max_open=1)
    mem = _in_memory(stores)
    idx = np.random.default_rng(1).permutation(len(sw))[:100]
    for g, w in zip(sw.batch(idx), mem.batch(idx), strict=True):
        np.testing.assert_array_equal(g, w)
    assert len(sw._readers) == 1


def test_pickled_copy_opens_its_own_stores(stores, tmp_path):
    import pickle

    sw = StreamingWindows(stores, index_dir=tmp_path)
    sw.batch(np.arange(4))
    copy = pickle.loads(pickle.dumps(sw))
    assert copy._readers == {}
    for g, w in zip(copy.batch(np.arange(4)), sw.batch(np.arange(4)), strict=True):
        np.testing.assert_array_equal(g, w)


def test_errors(stores, tmp_path):
    with pytest.raises(ValueError, match="no cube stores"):
        StreamingWindows([])
    with pytest.raises(ValueError, match="mode"):
        StreamingWindows(stores, mode="random")
    with pytest.raises(FileNotFoundError):
        StreamingWindows([tmp_path / "missing.zarr"])
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(StreamingWindows(stores[:1], index_dir=tmp_path), 0)

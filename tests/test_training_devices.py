"""Devices, precision, loader workers and streamed windows in the training loop (CPU)."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from latentcube.bundle import ModelBundle
from latentcube.cli import app
from latentcube.devices import DeviceError
from latentcube.io import write_zarr
from latentcube.models.config import AutoencoderConfig
from latentcube.training import AutoencoderTask, TrainConfig, fit, fit_autoencoder
from latentcube.training.distributed import backend_for, process_device
from latentcube.training.feed import StepStream, steps
from test_training import _data

from conftest import tiny_cube

runner = CliRunner()
TINY_TRAIN = {"max_epochs": 1, "batch_size": 16, "lr": 3e-3, "warmup_steps": 3, "num_threads": 1}


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Three small cube stores (different seeds, so different values)."""
    root = tmp_path_factory.mktemp("stores")
    paths = []
    for seed in range(3):
        p = root / f"cube{seed}.zarr"
        write_zarr(tiny_cube(n_time=22, ny=30, nx=30, seed=seed), p)
        paths.append(p)
    return paths


class _Recording(AutoencoderTask):
    """An autoencoder task that records the autocast state and devices of its steps."""

    seen: list[tuple[bool, torch.dtype, str, str]]

    def training_step(self, net, data, batch, shard, **kw):
        self.seen = getattr(self, "seen", [])
        self.seen.append(
            (
                torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"),
                str(data[0].device),
                str(next(net.parameters()).device),
            )
        )
        return super().training_step(net, data, batch, shard, **kw)


def test_bf16_autocast_reaches_the_step_and_its_checkpoint_embeds_on_cpu(tmp_path):
    from latentcube.inference import embed

    tr, va = _data()
    tr = tr.subset(np.arange(48))  # 3 steps per epoch; the 13 validation windows
    mcfg = AutoencoderConfig.preset("tiny")
    cfg = TrainConfig(**{**TINY_TRAIN, "max_epochs": 2})
    runs = {}
    for precision in ("32", "bf16"):
        task = _Recording(mcfg, tr, va)
        runs[precision] = (task, fit(task, cfg, tmp_path / precision, device="cpu",
                                     precision=precision, progress=False))  # fmt: skip
    (t32, r32), (t16, r16) = runs["32"], runs["bf16"]
    assert len(t16.seen) == r16.steps == 6
    assert all(s == (True, torch.bfloat16, "cpu", "cpu") for s in t16.seen)
    assert all(not s[0] for s in t32.seen)
    assert (r16.precision, r16.device, r32.precision) == ("bf16", "cpu", "32")
    # bf16 changes the arithmetic (a real autocast), not the result's scale
    l32 = [float(r["train_loss"]) for r in _rows(r32.metrics_csv)]
    l16 = [float(r["train_loss"]) for r in _rows(r16.metrics_csv)]
    assert l16 != l32 and l16 == pytest.approx(l32, rel=0.05)
    # the bf16 run's checkpoint: float32 CPU weights, its precision recorded; it embeds
    bundle = ModelBundle.load(r16.checkpoint)
    assert bundle.meta["precision"] == "bf16" and bundle.meta["device"] == "cpu"
    state = bundle.model.state_dict().values()
    assert all(v.device.type == "cpu" for v in state)
    assert all(v.dtype == torch.float32 for v in state if v.is_floating_point())
    cube = tiny_cube(n_time=14, ny=24, nx=24, seed=5)
    emb = embed(cube, bundle).compute()
    inner = emb.isel(time=slice(5, -5), y=slice(7, -7), x=slice(7, -7))
    ok = inner["valid"].values
    assert ok.any() and np.isfinite(inner.values[:, ok]).all()
    assert float(np.std(inner.values[:, ok])) > 0


def test_cli_device_and_precision(tmp_path):
    cube = write_zarr(tiny_cube(n_time=22, ny=40, nx=40, seed=1), tmp_path / "c.zarr")
    (tmp_path / "cfg.yaml").write_text("train:\n  batch_size: 32\n  num_threads: 1\n")
    args = ["train", str(cube), "--model", "tiny", "--max-epochs", "1", "--no-progress",
            "--config", str(tmp_path / "cfg.yaml")]  # fmt: skip
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "m"), "--device", "cpu",
                              "--precision", "bf16"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cpu, precision bf16, data wait" in res.output
    meta = ModelBundle.load(tmp_path / "m" / "best.pt").meta
    assert (meta["device"], meta["precision"], meta["processes"]) == ("cpu", "bf16", 1)
    bad = {
        "cuda": (["--device", "cuda"], "cuda"),
        "16-mixed": (["--device", "cpu", "--precision", "16-mixed"], "16-mixed"),
        "fp8": (["--precision", "fp8"], "fp8"),
        "stream one cube": (["--data", "stream"], "two or more"),
    }
    if torch.cuda.is_available():
        del bad["cuda"]
    for name, (opts, word) in bad.items():
        out = tmp_path / name.replace(" ", "_")
        res = runner.invoke(app, [*args, "-o", str(out), *opts])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and word in lines[0], (name, res.output)
        assert not out.exists(), name  # refused before anything is written


def test_process_device_and_backend(monkeypatch):
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert process_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            process_device("cuda")
        tr, va = _data()
        with pytest.raises(DeviceError, match="no CUDA GPU"):  # before any process starts
            fit(AutoencoderTask(AutoencoderConfig.preset("tiny"), tr, va), TrainConfig(),
                "unused", nproc=2, device="cuda", progress=False)  # fmt: skip


class _Read:
    """A picklable reader: the window indices themselves, as a tensor."""

    def __call__(self, idx):
        return torch.as_tensor(np.asarray(idx))


class _Source:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_step_stream_shards_and_workers():
    kw = {"batch_size": 8, "seed": 3, "epoch": 1}
    src = _Source(45)  # 5 full batches and one of 5: unequal shards
    one = list(steps(StepStream(src, _Read(), **kw)))
    order = np.random.default_rng([3, 1]).permutation(45)  # the loop's seeded order
    np.testing.assert_array_equal(np.concatenate([s.batch for s in one]), order)
    for s in one:
        np.testing.assert_array_equal(s.data.numpy(), s.batch)
    ranks = [list(steps(StepStream(src, _Read(), rank=r, world=2, **kw))) for r in (0, 1)]
    for s, a, b in zip(one, *ranks, strict=True):
        assert a.start == b.start == s.start
        joined = np.concatenate([a.data.numpy(), b.data.numpy()])
        np.testing.assert_array_equal(joined, s.batch)  # disjoint contiguous shards
        assert abs(len(a.shard) - len(b.shard)) <= 1
    workers = list(steps(StepStream(src, _Read(), rank=1, world=2, **kw), workers=2))
    assert [w.start for w in workers] == [b.start for b in ranks[1]]
    for w, b in zip(workers, ranks[1], strict=True):
        np.testing.assert_array_equal(w.data.numpy(), b.data.numpy())
    other = list(steps(StepStream(src, _Read(), **{**kw, "seed": 4})))
    assert not np.array_equal(other[0].batch, one[0].batch)


def test_streamed_training_from_stores_and_a_manifest(stores, tmp_path):
    from latentcube.cube.readers import open_cube
    from latentcube.data.windows import split_windows
    from latentcube.training.sources import stream_split

    bands = AutoencoderConfig.preset("tiny").bands
    s_tr, s_va = stream_split(stores, "s2", bands, seed=42)
    m_tr, m_va = split_windows([open_cube(p).load() for p in stores], "s2", bands, seed=42)
    for s, m in ((s_tr, m_tr), (s_va, m_va)):  # the in-memory path's windows, streamed
        assert len(s) == len(m) > 0
        for name in ("cube_id", "t_idx", "iy", "ix"):
            np.testing.assert_array_equal(getattr(s, name), getattr(m, name))
    common = {"train": TINY_TRAIN, "progress": False, "device": "cpu"}
    runs = {
        w: fit_autoencoder(stores, "tiny", tmp_path / f"w{w}", data="stream", workers=w, **common)
        for w in (0, 2)
    }
    a, b = _rows(runs[0].metrics_csv), _rows(runs[2].metrics_csv)
    for k in ("train_loss", "val_loss", "val_centre_mae"):
        assert float(a[0][k]) == float(b[0][k]), k  # the same steps with or without workers
    for row in (a[0], b[0]):
        assert 0 <= float(row["data_wait"]) <= 1 and float(row["data_seconds"]) >= 0
    m0, m2 = ModelBundle.load(runs[0].last), ModelBundle.load(runs[2].last)
    for (k, p0), p2 in zip(m0.model.state_dict().items(), m2.model.state_dict().values(),
                           strict=True):  # fmt: skip
        torch.testing.assert_close(p2, p0, rtol=0, atol=0, msg=k)
    assert m0.meta["data_loader"] == {"workers": 0, "source": "StreamingWindows"}
    assert m2.meta["provenance"]["windows"] == "streamed"
    assert runs[0].n_train == len(s_tr) and runs[0].n_val == len(s_va)
    # a 'cube --sites' folder: its built stores, streamed by default; failed sites skipped
    site_dir = stores[0].parent
    pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "status": ["ok", "ok", "error", "ok"],
         "path": [p.name for p in stores[:2]] + ["missing.zarr", stores[2].name]}
    ).to_csv(site_dir / "manifest.csv", index=False)  # fmt: skip
    res = fit_autoencoder([site_dir], "tiny", tmp_path / "manifest", **common)
    assert (res.n_train, res.n_val) == (runs[0].n_train, runs[0].n_val)
    meta = ModelBundle.load(res.last).meta
    assert meta["provenance"]["cubes"] == [str(p) for p in stores]
    assert meta["data_loader"]["source"] == "StreamingWindows"
    assert float(_rows(res.metrics_csv)[0]["train_loss"]) == float(a[0]["train_loss"])


@pytest.mark.slow
def test_streamed_training_on_two_processes_equals_one(stores, tmp_path):
    """DDP over streamed windows: each process reads its own shard of every global batch
    (through a loader worker), and two processes train as one does."""
    # batches of 12: the last of each epoch is split unequally between the processes
    train = {**TINY_TRAIN, "max_epochs": 2, "batch_size": 12}
    common = {"train": train, "progress": False, "device": "cpu"}
    one = fit_autoencoder(stores, "tiny", tmp_path / "one", data="stream", workers=0, **common)
    two = fit_autoencoder(stores, "tiny", tmp_path / "two", data="stream", workers=1, nproc=2,
                          **common)  # fmt: skip
    assert two.steps == one.steps > 0 and two.epochs == one.epochs == 2
    for ra, rb in zip(_rows(one.metrics_csv), _rows(two.metrics_csv), strict=True):
        for k in ("train_loss", "val_loss", "val_centre_mae"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=2e-4), (k, ra, rb)
    b1, b2 = ModelBundle.load(one.last), ModelBundle.load(two.last)
    assert (b2.meta["processes"], b2.meta["backend"]) == (2, "gloo")
    d = b1.model.config.d_model
    for (k, p1), p2 in zip(b1.model.state_dict().items(), b2.model.state_dict().values(),
                           strict=True):  # fmt: skip
        if k.endswith("in_proj_bias"):  # the key bias: zero gradient, Adam steps on noise
            p1, p2 = torch.cat([p1[:d], p1[2 * d :]]), torch.cat([p2[:d], p2[2 * d :]])
        torch.testing.assert_close(p2, p1, rtol=1e-3, atol=2e-5, msg=k)


def test_a_last_batch_smaller_than_the_group_is_left_out():
    kw = {"batch_size": 8, "seed": 0, "epoch": 0, "world": 2}
    for rank in (0, 1):  # 17 windows: two batches of 8, then one window for two processes
        got = list(steps(StepStream(_Source(17), _Read(), rank=rank, **kw)))
        assert [s.start for s in got] == [0, 8] and all(len(s.shard) == 4 for s in got)
    assert len(list(steps(StepStream(_Source(17), _Read(), batch_size=8, seed=0, epoch=0)))) == 3


def test_train_refuses_negative_loader_workers_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from latentcube.cli import app

    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.zarr"), "--workers", "-1"])
    assert res.exit_code == 2
    assert res.output.strip() == "error: workers must be an integer of 0 or more, got -1"

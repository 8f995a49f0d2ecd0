"""Embedding on a device: whole-tile batches, GPU workers of Dask, --device, checkpoints.

The GPU code path (the model on a device, whole tiles per call, results back on the
host; tasks asking for the ``GPU`` worker resource) runs here on the CPU and is
checked against independent references: window-by-window evaluation of the model
and the in-memory CPU embedding. Tests marked ``needs_cuda`` also compare a real
GPU with the CPU where a GPU is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from latentcube.bundle import ModelBundle, save_checkpoint
from latentcube.cli import app
from latentcube.devices import DeviceError
from latentcube.errors import EmbeddingError
from latentcube.inference import (
    embed,
    embed_block,
    embed_to_zarr,
    embed_windows,
    embedding_dataset,
    open_embedding,
)
from latentcube.inference.autoencoder import default_batch, model_device
from latentcube.inference.cluster import (
    GPU_RESOURCE,
    Placement,
    gpu_worker_specs,
    local_cluster,
    placement,
)
from latentcube.inference.engine import on_device, plan
from latentcube.inference.job import Options
from latentcube.inference.tasks import sensor_arrays
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.models.fusion import FusionConfig, FusionModel

from conftest import tiny_cube

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
TOL = 1e-4  # fp32 agreement of a device with the CPU


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices")
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    ckpt = save_checkpoint(root / "m.pt", model)
    cube = tiny_cube(n_time=13, ny=36, nx=40, seed=5, cloud_fraction=0.2)
    return root, model, ckpt, cube, write_zarr(cube, root / "cube.zarr")


@pytest.fixture(scope="module")
def fused():
    torch.manual_seed(1)
    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes).eval()
    return model, tiny_cube(n_time=13, ny=62, nx=60, seed=2, cloud_fraction=0.3)


def _block(cube):
    data, valid = sensor_arrays(cube, "s2")
    days = cube["time"].values.astype("datetime64[D]").astype(np.int64)
    return np.asarray(data, np.float32), np.asarray(valid, bool), days


# -- batching on the device ------------------------------------------------------------


def test_default_batches_are_small_on_a_cpu_and_whole_tiles_elsewhere():
    assert default_batch("cpu", 100_000) == 2048
    assert default_batch(torch.device("cpu"), 10, cpu=8192) == 8192
    assert default_batch("cuda", 100_000) == 100_000
    assert default_batch("cuda:1", 65_536, cpu=8192) == 65_536
    assert default_batch("mps", 0) == 1


def test_whole_tile_batches_equal_window_by_window_evaluation(fused):
    """The accelerator's batching (every pixel of a date in one call), run on the CPU, gives
    what the model gives window by window, as the CPU's 2048-pixel batches do."""
    model, cube = fused
    ae = model.autoencoder("s2")
    data, valid, days = _block(cube)
    n_pix = (cube.sizes["y"] - 14) * (cube.sizes["x"] - 14)
    assert n_pix > 2048  # the CPU default really cuts the tile into several calls
    whole, whole_err = embed_block(ae, data, valid, days, batch_size=n_pix)
    cpu, cpu_err = embed_block(ae, data, valid, days)
    rng = np.random.default_rng(0)
    pix = np.stack([rng.integers(5, 8, 300), rng.integers(0, 48, 300), rng.integers(0, 46, 300)], 1)
    ref, ref_err = embed_windows(ae, data, valid, days, pixels=pix)
    t, y, x = pix.T
    assert np.isfinite(ref[:, t, y, x]).any()
    np.testing.assert_allclose(whole[:, t, y, x], ref[:, t, y, x], atol=TOL)
    np.testing.assert_allclose(whole_err[t, y, x], ref_err[t, y, x], atol=TOL)
    np.testing.assert_allclose(whole, cpu, atol=TOL)
    np.testing.assert_array_equal(np.isnan(whole), np.isnan(cpu))
    np.testing.assert_allclose(whole_err, cpu_err, atol=TOL)


def test_fused_whole_tile_batches_equal_the_cpu_path(fused):
    model, cube = fused
    chunk = (slice(0, 13), slice(0, 62), slice(0, 60))
    tile = plan(model, cube, Options(batch_size=13 * 62 * 60))
    ref = plan(model, cube, Options())
    arrays = {s: sensor_arrays(cube, s) for s, _ in tile.reads}
    got, want = tile.compute(model, arrays, *chunk), ref.compute(model, arrays, *chunk)
    assert np.isfinite(want["embedding"]).any()
    np.testing.assert_allclose(got["embedding"], want["embedding"], atol=TOL)
    np.testing.assert_array_equal(got["sensors"], want["sensors"])
    np.testing.assert_allclose(got["recon_mae"], want["recon_mae"], atol=TOL)


def test_on_device_copies_the_model_and_leaves_the_callers_model_in_place(stage1):
    model = stage1[1]
    assert on_device(model, "cpu") is model
    moved = on_device(model, "meta")  # a device without data: only the placement is checked
    assert moved is not model and model_device(moved).type == "meta"
    assert model_device(model).type == "cpu"


def test_in_memory_embedding_takes_a_device(stage1):
    _, model, _, cube, _ = stage1
    ref = embedding_dataset(embed(cube, model)).compute()
    got = embedding_dataset(embed(cube, model, device="cpu", batch_size=10_000)).compute()
    np.testing.assert_allclose(got["embedding"].values, ref["embedding"].values, atol=TOL)
    np.testing.assert_array_equal(got["valid"].values, ref["valid"].values)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            embed(cube, model, device="cuda")


# -- where the tasks run ---------------------------------------------------------------


def test_placement_off_cuda():
    assert placement("cpu") == Placement("cpu", (), None)
    assert placement("cpu", resources={"GPU": 1}).resources == {"GPU": 1}
    with pytest.raises(DeviceError, match="unknown device"):
        placement("gpu")
    # with a scheduler the workers own the GPUs: a driver without one may ask for cuda
    gpu = Placement("cuda", (), {GPU_RESOURCE: 1})
    assert placement("cuda", scheduler="tcp://h:8786") == gpu
    assert placement("cuda:1", scheduler="tcp://h:8786") == gpu
    with pytest.raises(DeviceError, match="unknown device"):
        placement("cuda:x", scheduler="tcp://h:8786")


@pytest.fixture
def two_gpus(monkeypatch):
    """torch reports two CUDA GPUs (only the placement logic runs; nothing uses them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_placement_gives_each_local_gpu_a_worker(two_gpus):
    gpu = {GPU_RESOURCE: 1}
    assert placement("cuda") == Placement("cuda", (0, 1), gpu)
    assert placement("auto") == Placement("cuda", (0, 1), gpu)
    assert placement("cuda:1") == Placement("cuda", (1,), gpu)
    assert placement("cuda", workers=1) == Placement("cuda", (0,), gpu)
    # worker threads of this process see every GPU: one GPU, named by its index
    assert placement("cuda:1", processes=False) == Placement("cuda:1", (1,), gpu)
    # the user's workers each see their own GPU and declare the resource
    assert placement("cuda", scheduler="tcp://h:8786") == Placement("cuda", (), gpu)
    with pytest.raises(EmbeddingError, match="needs its own GPU"):
        placement("cuda", workers=3)


def test_gpu_worker_specs_pin_each_worker_to_its_gpu():
    from distributed import Nanny, Worker

    base = {"cls": Nanny, "options": {"nthreads": 4, "host": "127.0.0.1", "env": {"A": "1"}}}
    specs = gpu_worker_specs(base, [0, 2])
    assert list(specs) == ["gpu-0", "gpu-2"]
    for g, spec in zip((0, 2), specs.values(), strict=True):
        assert spec["cls"] is Nanny
        opts = spec["options"]
        assert opts["nthreads"] == 1 and opts["resources"] == {GPU_RESOURCE: 1}
        assert opts["host"] == "127.0.0.1"
        assert opts["env"] == {"A": "1", "CUDA_VISIBLE_DEVICES": str(g)}
    assert base["options"] == {"nthreads": 4, "host": "127.0.0.1", "env": {"A": "1"}}
    threads = gpu_worker_specs({"cls": Worker, "options": {}}, [0])
    assert "env" not in threads["gpu-0"]["options"]  # a thread cannot have its own environment


def test_tasks_asking_for_the_gpu_resource_run_on_a_gpu_worker(stage1, tmp_path):
    """The CUDA plumbing on a CPU: a local cluster of GPU workers (resource GPU=1), tasks
    submitted with resources={"GPU": 1}; the store equals the in-memory CPU embedding."""
    from dask.distributed import Client

    _, model, ckpt, cube, src = stage1
    ref = embedding_dataset(embed(cube, model)).compute()
    cluster = local_cluster(1, 1, processes=False, gpus=(0,))
    try:
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
            info = client.scheduler_info(n_workers=-1)["workers"].values()
            assert [w["resources"] for w in info] == [{GPU_RESOURCE: 1}]
            assert [w["name"] for w in info] == ["gpu-0"]
            worker = next(iter(cluster.workers.values()))
            embed_to_zarr(
                src, ckpt, tmp_path / "e.zarr", chunk=16, time_chunk=5, progress=False,
                scheduler=cluster.scheduler_address, resources={GPU_RESOURCE: 1},
            )  # fmt: skip
            ran = {e[0] for e in worker.state.log if str(e[0]).startswith("latentcube-embed")}
    finally:
        cluster.close()
    assert len(ran) == 3 * 3 * 3  # every chunk ran on the GPU worker
    got = open_embedding(tmp_path / "e.zarr")
    np.testing.assert_allclose(got["embedding"].values, ref["embedding"].values, atol=TOL)
    np.testing.assert_array_equal(got["valid"].values, ref["valid"].values)


def test_a_cluster_without_gpu_workers_is_refused_before_anything_is_written(stage1, tmp_path):
    """--scheduler with --device cuda: the driver needs no GPU, the workers must declare one."""
    from dask.distributed import LocalCluster

    src, ckpt = stage1[4], stage1[2]
    out = tmp_path / "e.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:  # fmt: skip
        with pytest.raises(EmbeddingError, match=r"declares the resources GPU=1.*--resources"):
            embed_to_zarr(
                src, ckpt, out, chunk=16, progress=False,
                scheduler=cluster.scheduler_address, resources={GPU_RESOURCE: 1},
            )  # fmt: skip
        assert list(tmp_path.iterdir()) == []
        args = ["embed", str(src), "--model", str(ckpt), "--out", str(out), "--no-progress"]
        res = CliRunner().invoke(
            app, [*args, "--scheduler", cluster.scheduler_address, "--device", "cuda"]
        )
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "GPU=1" in errors[0], res.output
    assert list(tmp_path.iterdir()) == []


# -- the commands ----------------------------------------------------------------------


@no_cuda
def test_embed_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(stage1, tmp_path):
    src = stage1[4]
    out = tmp_path / "e.zarr"
    res = CliRunner().invoke(app, ["embed", str(src), "--out", str(out), "--device", "cuda"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA GPU" in errors[0], res.output
    assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


@no_cuda
def test_evaluate_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(stage1, tmp_path):
    src, ckpt = stage1[4], stage1[2]
    out = tmp_path / "report"
    args = ["evaluate", "landcover", str(src), "--out", str(out), "--model", str(ckpt)]
    res = CliRunner().invoke(app, [*args, "--device", "cuda"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA GPU" in errors[0], res.output
    assert not out.exists()


def test_embed_device_cpu_writes_the_cpu_embedding(stage1, tmp_path):
    _, model, ckpt, cube, src = stage1
    out = tmp_path / "e.zarr"
    args = ["embed", str(src), "--model", str(ckpt), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ref = embedding_dataset(embed(cube, model)).compute()
    got = open_embedding(out)
    np.testing.assert_allclose(got["embedding"].values, ref["embedding"].values, atol=1e-6)


def test_evaluation_embeds_on_the_device_it_is_given(stage1):
    from latentcube.evaluation.runs import embedding_features

    _, model, ckpt, cube, _ = stage1
    feats = embedding_features([cube], ckpt, device="cpu")["embedding"][0]
    ref = embed(cube, model).compute()
    np.testing.assert_allclose(feats.values, ref.values, atol=1e-6)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            embedding_features([cube], ckpt, device="cuda")


# -- checkpoints between devices -------------------------------------------------------


def test_a_saved_model_loads_on_the_cpu_and_embeds_as_before(stage1, tmp_path):
    _, model, _, cube, _ = stage1
    path = save_checkpoint(tmp_path / "moved.pt", on_device(model, "cpu"))
    bundle = ModelBundle.load(path)
    assert {p.device.type for p in bundle.model.state_dict().values()} == {"cpu"}
    got = embedding_dataset(embed(cube, bundle, device="cpu")).compute()
    ref = embedding_dataset(embed(cube, model)).compute()
    np.testing.assert_array_equal(got["embedding"].values, ref["embedding"].values)


@needs_cuda
def test_trained_on_a_gpu_embeds_on_the_cpu_and_the_gpu_agrees(stage1, tmp_path):
    _, model, _, cube, src = stage1
    gpu_model = on_device(model, "cuda")
    path = save_checkpoint(tmp_path / "gpu.pt", gpu_model)  # saved from GPU tensors
    bundle = ModelBundle.load(path)
    assert {p.device.type for p in bundle.model.state_dict().values()} == {"cpu"}
    cpu = embedding_dataset(embed(cube, bundle)).compute()
    gpu = embedding_dataset(embed(cube, bundle, device="cuda")).compute()
    np.testing.assert_allclose(gpu["embedding"].values, cpu["embedding"].values, atol=TOL)
    np.testing.assert_array_equal(gpu["valid"].values, cpu["valid"].values)
    store = embed_to_zarr(src, path, tmp_path / "g.zarr", chunk=16, progress=False,
                          device="cuda")  # fmt: skip
    np.testing.assert_allclose(
        open_embedding(store)["embedding"].values, cpu["embedding"].values, atol=TOL
    )

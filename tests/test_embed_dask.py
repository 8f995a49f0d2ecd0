"""Large-area embedding with Dask: equal to the in-memory path, chunking-invariant, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentcube.bundle import save_checkpoint
from latentcube.errors import LatentcubeError
from latentcube.inference import (
    embed,
    embedding_dataset,
    open_embedding,
    progress_dir,
)
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig

from conftest import embed_to_zarr_in_process, pretend_unfinished, tiny_cube


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    ckpt = save_checkpoint(root / "m.pt", model)
    cube = tiny_cube(n_time=14, ny=37, nx=41, seed=3, cloud_fraction=0.15)
    src = write_zarr(cube, root / "cube.zarr")
    ref = {e: embedding_dataset(embed(cube, model, edge=e)).compute() for e in ("nan", "pad")}
    return root, ckpt, src, ref


def _run(setup, out, chunk, time_chunk=64, **kw):
    _, ckpt, src, _ = setup
    return embed_to_zarr_in_process(src, ckpt, out, chunk=chunk, time_chunk=time_chunk, **kw)


@pytest.mark.parametrize(
    ("chunk", "time_chunk", "edge"),
    [(8, 3, "nan"), (16, 64, "nan"), (64, 1, "pad"), (13, 5, "pad")],
)
def test_equals_in_memory_embedding_for_any_chunking(setup, tmp_path, chunk, time_chunk, edge):
    ref = setup[3][edge]
    out = open_embedding(_run(setup, tmp_path / "e.zarr", chunk, time_chunk, edge=edge))
    assert set(out.data_vars) == set(ref.data_vars)
    np.testing.assert_allclose(out["embedding"].values, ref["embedding"].values, atol=1e-6)
    np.testing.assert_array_equal(out["valid"].values, ref["valid"].values)
    np.testing.assert_allclose(out["recon_mae_s2"].values, ref["recon_mae_s2"].values, atol=1e-6)
    if edge == "pad":
        np.testing.assert_array_equal(out["padded"].values, ref["padded"].values)
    assert out.rio.crs == ref.rio.crs
    assert not progress_dir(tmp_path / "e.zarr").exists()
    assert out["embedding"].encoding["chunks"] == (9, 1, min(chunk, 37), min(chunk, 41))


def test_complete_store_is_not_overwritten(setup, tmp_path):
    _run(setup, tmp_path / "e.zarr", 32)
    with pytest.raises(FileExistsError, match="complete embedding store"):
        _run(setup, tmp_path / "e.zarr", 32)
    _run(setup, tmp_path / "e.zarr", 32, overwrite=True)


def test_resume_skips_done_chunks_and_refuses_other_runs(setup, tmp_path):
    out = tmp_path / "e.zarr"
    _run(setup, out, 16)
    ref = open_embedding(out)["embedding"].values
    # pretend the run stopped after some chunks: drop the others' markers and data
    import zarr

    pretend_unfinished(out)
    (progress_dir(out) / "0_0_0").write_text(str(14 * 16 * 16))
    root = zarr.open_group(out, mode="r+")
    root["embedding"][:, :, 16:, :] = np.nan
    with pytest.raises(LatentcubeError, match="unfinished run of another"):
        _run(setup, out, 8)
    with pytest.raises(LatentcubeError, match="unfinished run of another"):
        _run(setup, out, 16, edge="pad")
    with pytest.raises(LatentcubeError, match="unfinished run of another"):
        _run(setup, out, 16, compression="gzip")
    _run(setup, out, 16)
    np.testing.assert_array_equal(open_embedding(out)["embedding"].values, ref)


def _store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store; the root metadata without its creation time stamp."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p == root / "zarr.json":
                meta = json.loads(data)
                meta["attributes"].pop("created")
                data = json.dumps(meta, sort_keys=True).encode()
            files[str(p.relative_to(root))] = data
    return files


SCRIPT = """
import sys, time
import {module} as mod
real = mod.{function}
def slow(*a, **k):
    time.sleep({sleep})
    return real(*a, **k)
mod.{function} = slow
from latentcube.inference import embed_to_zarr
if __name__ == "__main__":
    embed_to_zarr(sys.argv[1], sys.argv[2], sys.argv[3], chunk={chunk}, time_chunk={time_chunk},
                  workers=1, processes=False, progress=False)
"""


def kill_part_way_then_rerun(tmp_path, src, ckpt, out, n_chunks, **script):
    """Run ``embed_to_zarr`` (slowed down) in a subprocess, SIGKILL it after 3 chunks, rerun.

    ``script`` fills :data:`SCRIPT`: ``module`` and ``function`` to slow down, ``sleep``,
    ``chunk`` and ``time_chunk``. Returns the number of chunks done before the kill.
    """
    path = tmp_path / "run.py"
    path.write_text(SCRIPT.format(**script))
    cmd = [sys.executable, str(path), str(src), str(ckpt), str(out)]
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 120
    while time.time() < deadline:
        marks = progress_dir(out)
        if marks.exists() and len(list(marks.iterdir())) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(progress_dir(out).iterdir()))
    assert 3 <= n_done < n_chunks, "the run must be killed part-way"
    subprocess.run(cmd, check=True, timeout=300)
    assert not progress_dir(out).exists()
    return n_done


@pytest.mark.slow
def test_sigkill_and_rerun_gives_a_byte_identical_store(setup, tmp_path):
    _, ckpt, src, _ = setup
    ref = _run(setup, tmp_path / "ref.zarr", 8, 7)
    out = tmp_path / "killed.zarr"
    kill_part_way_then_rerun(
        tmp_path, src, ckpt, out, 60, module="latentcube.inference.autoencoder",
        function="embed_block", sleep=0.2, chunk=8, time_chunk=7,
    )  # fmt: skip
    want, got = _store_files(Path(ref)), _store_files(out)
    # chunks holding only NaN are not stored (Zarr's fill value), the others are
    assert sum(k.startswith("embedding/c/") for k in want) >= 60
    assert sorted(got) == sorted(want)
    for rel, data in want.items():
        assert got[rel] == data, rel


LOST_WORKER = """
import os, signal, sys, time, threading
from pathlib import Path
from dask.distributed import Client, LocalCluster, WorkerPlugin
from latentcube.inference import embed_to_zarr, progress_dir


class SlowAndLogged(WorkerPlugin):
    # every worker, also one started after a loss, logs each chunk it computes

    def __init__(self, log):
        self.log = log

    def setup(self, worker):
        import os as _os
        import time as _t
        import latentcube.inference.autoencoder as inf
        real, log = inf.embed_block, self.log

        def slow(*a, **k):
            with open(log, "a") as fh:
                fh.write(f"{_os.getpid()}\\n")
            _t.sleep(0.2)
            return real(*a, **k)

        inf.embed_block = slow


if __name__ == "__main__":
    src, ckpt, out, log = sys.argv[1:5]
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    client.register_plugin(SlowAndLogged(log))
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]

    def kill_one():
        # kill one worker once it has finished some chunks and is busy with another
        while True:
            marks = progress_dir(out)
            lines = Path(log).read_text().split() if Path(log).exists() else []
            if marks.exists() and len(list(marks.iterdir())) >= 4 and lines.count(str(victim)) >= 3:
                break
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        print("killed", victim, flush=True)

    threading.Thread(target=kill_one, daemon=True).start()
    embed_to_zarr(src, ckpt, out, chunk=8, time_chunk=7, scheduler=cluster.scheduler_address,
                  progress=False)
    print("done", flush=True)
    client.close()
    cluster.close()
"""


@pytest.mark.slow
def test_a_lost_worker_costs_only_its_chunks(setup, tmp_path):
    _, ckpt, src, ref = setup
    script = tmp_path / "lost.py"
    script.write_text(LOST_WORKER)
    out, log = tmp_path / "e.zarr", tmp_path / "log.txt"
    res = subprocess.run(
        [sys.executable, str(script), str(src), str(ckpt), str(out), str(log)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "killed" in res.stdout and "done" in res.stdout
    n_chunks = 2 * 5 * 6  # 14 dates / 7, 37 px / 8, 41 px / 8
    runs = log.read_text().split()
    # every chunk ran once, plus at most the one chunk the killed worker was computing
    assert n_chunks <= len(runs) <= n_chunks + 1, len(runs)
    assert len(set(runs)) >= 3  # the killed worker, the survivor and the restarted worker
    got = open_embedding(out)
    np.testing.assert_allclose(got["embedding"].values, ref["nan"]["embedding"].values, atol=1e-6)
    np.testing.assert_array_equal(got["valid"].values, ref["nan"]["valid"].values)


def test_resume_refuses_a_cube_replaced_at_the_same_path(setup, tmp_path):
    """An unfinished run does not continue on another cube written to the same path."""
    from latentcube.inference import cube_fingerprint

    _, ckpt, _, _ = setup
    src = write_zarr(tiny_cube(n_time=14, ny=37, nx=41, seed=3, cloud_fraction=0.15),
                     tmp_path / "cube.zarr")  # fmt: skip
    before = cube_fingerprint(src)
    assert cube_fingerprint(src) == before  # stable while the cube stays
    out = tmp_path / "e.zarr"
    embed_to_zarr_in_process(src, ckpt, out, chunk=16)
    pretend_unfinished(out)  # pretend the run stopped half way
    # the same path now holds a cube of other values (another seed) and fewer dates
    write_zarr(tiny_cube(n_time=12, ny=37, nx=41, seed=4, cloud_fraction=0.15), src,
               overwrite=True)  # fmt: skip
    assert cube_fingerprint(src) != before
    with pytest.raises(LatentcubeError, match="unfinished run of another"):
        embed_to_zarr_in_process(src, ckpt, out, chunk=16)


def test_worker_caches_follow_the_file_contents(setup, tmp_path):
    """A checkpoint or cube replaced at the same path is loaded afresh by a worker."""
    from latentcube.inference.tasks import (
        _worker_cube,
        _worker_model,
        cube_fingerprint,
        file_digest,
    )

    _, ckpt, _, _ = setup
    path = tmp_path / "m.pt"
    path.write_bytes(Path(ckpt).read_bytes())
    first = _worker_model(str(path), file_digest(path))
    torch.manual_seed(1)
    save_checkpoint(path, build_autoencoder(AutoencoderConfig.preset("tiny")).eval())
    second = _worker_model(str(path), file_digest(path))
    w1, w2 = (next(m.parameters()).detach() for m in (first, second))
    assert not torch.equal(w1, w2)
    bands = (("s2", ("B02", "B03")),)
    src = write_zarr(tiny_cube(n_time=5, ny=9, nx=9, seed=0), tmp_path / "c.zarr")
    a = _worker_cube(str(src), cube_fingerprint(src), bands)
    write_zarr(tiny_cube(n_time=7, ny=9, nx=9, seed=1), src, overwrite=True)
    b = _worker_cube(str(src), cube_fingerprint(src), bands)
    assert a.sizes["time"] == 5 and b.sizes["time"] == 7

"""Large-area embedding with Dask: equal to the in-memory path, chunking-invariant, resumable."""

from __future__ import annotations

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
from latentcube.inference import embed, embed_to_zarr, open_embedding, progress_dir
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig

from conftest import tiny_cube


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    ckpt = save_checkpoint(root / "m.pt", model)
    cube = tiny_cube(n_time=14, ny=37, nx=41, seed=3, cloud_fraction=0.15)
    src = write_zarr(cube, root / "cube.zarr")
    ref = embed(cube, model)
    return root, ckpt, src, ref


def _run(setup, out, chunk, **kw):
    _, ckpt, src, _ = setup
    return embed_to_zarr(
        src, ckpt, out, chunk=chunk, workers=1, processes=False, progress=False, **kw
    )


@pytest.mark.parametrize("chunk", [5, 16, 64])
def test_equals_in_memory_embedding_for_any_chunking(setup, tmp_path, chunk):
    ref = setup[3]
    out = open_embedding(_run(setup, tmp_path / "e.zarr", chunk))
    np.testing.assert_allclose(out["embedding"].values, ref["embedding"].values, atol=1e-6)
    np.testing.assert_array_equal(out["valid"].values, ref["valid"].values)
    np.testing.assert_allclose(out["recon_mae"].values, ref["recon_mae"].values, atol=1e-6)
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

    progress_dir(out).mkdir()
    (progress_dir(out) / "0_0").write_text("done")
    root = zarr.open_group(out, mode="r+")
    root["embedding"][:, :, 16:, :] = np.nan
    with pytest.raises(LatentcubeError, match="unfinished run of another"):
        _run(setup, out, 8)
    _run(setup, out, 16)
    np.testing.assert_array_equal(open_embedding(out)["embedding"].values, ref)


SCRIPT = """
import sys, time
import latentcube.inference as inf
real = inf.embed_block
def slow(*a, **k):
    time.sleep(0.4)
    return real(*a, **k)
inf.embed_block = slow
from latentcube.inference import embed_to_zarr
if __name__ == "__main__":
    embed_to_zarr(sys.argv[1], sys.argv[2], sys.argv[3], chunk=8, workers=1, processes=False,
                  progress=False)
"""


@pytest.mark.slow
def test_sigkill_and_rerun_gives_identical_chunks(setup, tmp_path):
    _, ckpt, src, _ = setup
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref = _run(setup, tmp_path / "ref.zarr", 8)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(ckpt), str(out)])
    deadline = time.time() + 120
    while time.time() < deadline:
        marks = progress_dir(out)
        if marks.exists() and len(list(marks.iterdir())) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(progress_dir(out).iterdir()))
    assert 3 <= n_done < 30, "the run must be killed part-way"
    subprocess.run(
        [sys.executable, str(script), str(src), str(ckpt), str(out)], check=True, timeout=300
    )
    assert not progress_dir(out).exists()
    chunk_files = sorted(p.relative_to(ref) for p in Path(ref).rglob("c/**/*") if p.is_file())
    assert len(chunk_files) > 100
    for rel in chunk_files:
        assert (out / rel).read_bytes() == (Path(ref) / rel).read_bytes(), rel
    np.testing.assert_array_equal(
        open_embedding(out)["embedding"].values, open_embedding(ref)["embedding"].values
    )

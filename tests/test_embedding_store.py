"""The embedding store's layout and its checks (``latentcube.embedding_store``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from latentcube.embedding_store import (
    COMPLETE_ATTR,
    IDENTITY_ATTR,
    embedding_array,
    open_embedding,
    store_status,
)
from latentcube.errors import EmbeddingError, EvaluationError
from latentcube.inference import embed, write_embedding
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig

from conftest import tiny_cube


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    emb = embed(tiny_cube(n_time=12, ny=18, nx=18, seed=1), model)
    return write_embedding(emb, tmp_path_factory.mktemp("store") / "e.zarr")


def _set_attrs(path, **attrs):
    zarr.open_group(path, mode="r+", zarr_format=3).attrs.update(attrs)


def test_the_store_module_needs_no_torch():
    code = "import sys, latentcube.embedding_store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_status_is_read_from_what_the_store_holds(store, tmp_path):
    assert store_status(tmp_path / "nothing") == ("absent", None)
    assert store_status(store) == ("complete", None)
    cube = write_zarr(tiny_cube(n_time=3, ny=4, nx=4), tmp_path / "cube.zarr")
    assert store_status(cube)[0] == "foreign"  # a cube is not an embedding store
    (tmp_path / "file").write_text("x")
    assert store_status(tmp_path / "file")[0] == "foreign"
    import shutil

    run = shutil.copytree(store, tmp_path / "run.zarr")
    _set_attrs(run, **{IDENTITY_ATTR: "abc", COMPLETE_ATTR: False})
    assert store_status(run) == ("unfinished", "abc")
    _set_attrs(run, **{COMPLETE_ATTR: True})
    assert store_status(run) == ("complete", "abc")
    meta = zarr.open_group(run, mode="r+", zarr_format=3)
    del meta.attrs[COMPLETE_ATTR]  # written chunk by chunk by an earlier version
    assert store_status(run) == ("legacy", "abc")


def test_open_embedding_refuses_what_is_not_a_finished_store(store, tmp_path):
    ds = open_embedding(store)
    assert ds["embedding"].dims == ("feature", "time", "y", "x")
    assert ds.attrs[COMPLETE_ATTR] is True
    import shutil

    run = shutil.copytree(store, tmp_path / "run.zarr")
    _set_attrs(run, **{IDENTITY_ATTR: "abc", COMPLETE_ATTR: False})
    with pytest.raises(EmbeddingError, match="unfinished embedding run"):
        open_embedding(run)
    cube = write_zarr(tiny_cube(n_time=3, ny=4, nx=4), tmp_path / "cube.zarr")
    with pytest.raises(EmbeddingError, match="not an embedding store"):
        open_embedding(cube)
    with pytest.raises(FileNotFoundError):
        open_embedding(tmp_path / "nothing")


def test_embedding_array_checks_the_variable_and_the_dims():
    da = xr.DataArray(np.zeros((2, 3, 4, 5)), dims=("feature", "time", "y", "x"))
    assert embedding_array(xr.Dataset({"embedding": da})) is not None
    with pytest.raises(EmbeddingError, match="no 'embedding'"):
        embedding_array(xr.Dataset({"a": da}))
    moved = da.transpose("time", "feature", "y", "x")
    with pytest.raises(EvaluationError, match="dims"):
        embedding_array(moved, error=EvaluationError)
    assert embedding_array(moved, any_order=True).dims == ("feature", "time", "y", "x")

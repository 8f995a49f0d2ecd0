"""Every reader's sample embeds the same through Dask workers and in memory.

``embed_to_zarr``'s tasks open the cube themselves (in a Dask worker), through
``latentcube.cube.readers.open_cube`` like the driver, so stored quantised values
(uint16 with a scale factor), float64 data and uint8 masks reach the model as the
float32 values and bool masks of the data model, as they do in memory.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube.bundle import ModelBundle
from latentcube.cube.readers import demo_cube_path, load_demo_cube, open_cube
from latentcube.inference import embed, embed_to_zarr, embedding_dataset, open_embedding
from latentcube.io import write_zarr
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.models.fusion import FusionConfig, FusionModel

from conftest import shared_path, tiny_cube

CHUNKS = {"time": 8, "y": 16, "x": 16}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A random tiny S2 model, a fused S2 + S1 one and a 4-band S2 one, saved."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)).eval() for s in ("s2", "s1")}
    fused = FusionModel(FusionConfig.for_autoencoders(aes), aes).eval()
    four = AutoencoderConfig.preset("tiny", "s2", bands=("B02", "B03", "B04", "B8A"))
    return {
        "s2": ModelBundle(aes["s2"]).save(root / "s2.pt"),
        "fused": ModelBundle(fused).save(root / "fused.pt"),
        "s2_4bands": ModelBundle(build_autoencoder(four).eval()).save(root / "s2_4.pt"),
    }


def _same(path, bundle_file, out, **dask):
    """The store of ``embed_to_zarr`` equals ``embed`` of the opened cube (same chunks)."""
    bundle = ModelBundle.load(bundle_file)
    ref = embedding_dataset(embed(open_cube(path), bundle, chunks=CHUNKS)).compute()
    kw = {"chunk": 16, "time_chunk": 8, "progress": False, **dask}
    got = open_embedding(embed_to_zarr(path, bundle_file, out, **kw))
    assert set(got.data_vars) == set(ref.data_vars)
    for name in ref.data_vars:
        a, b = got[name].values, ref[name].values
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert int(got["valid"].sum()) > 0
    return got


ON_A_WORKER = {"workers": 1, "processes": False}  # a Dask worker opens the cube itself


@pytest.mark.parametrize("model", ["s2", "fused"])
def test_bundled_demo_cube_as_shipped(bundles, tmp_path, model):
    """The zipped sample stores S2 and S1 as uint16 with a scale factor."""
    _same(demo_cube_path(), bundles[model], tmp_path / "e.zarr", **ON_A_WORKER)


def _demo_crop():
    return load_demo_cube().isel(time=slice(0, 16), y=slice(0, 30), x=slice(0, 30))


@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param(
            {
                "s2": {"dtype": "uint16", "scale_factor": np.float32(1e-4), "_FillValue": 0},
                "s1": {
                    "dtype": "uint16",
                    "scale_factor": np.float32(1 / 65000),
                    "_FillValue": np.uint16(65535),
                },
            },
            id="uint16-scale-factor",
        ),
        pytest.param({"s2": {"dtype": "float64"}, "s1": {"dtype": "float64"}}, id="float64"),
        pytest.param({"s2_valid": {"dtype": "uint8"}, "s1_valid": {"dtype": "uint8"}}, id="uint8"),
    ],
)
def test_zarr_stores_with_other_storage_types(bundles, tmp_path, encoding):
    path = write_zarr(_demo_crop(), tmp_path / "cube.zarr", encoding=encoding)
    raw = __import__("zarr").open_group(path, mode="r")
    stored = {k: str(raw[k].dtype) for k in encoding}
    assert all(stored[k] == str(np.dtype(v["dtype"])) for k, v in encoding.items())
    for model in ("s2", "fused"):
        _same(path, bundles[model], tmp_path / f"{model}.zarr", **ON_A_WORKER)


def test_the_default_run_in_this_process_equals_the_workers(bundles, tmp_path):
    """Without a worker count a small run embeds in this process (its chunks cut in time)."""
    path = write_zarr(tiny_cube(n_time=14, ny=20, nx=19, seed=3), tmp_path / "cube.zarr")
    for model in ("s2", "fused"):
        a = _same(path, bundles[model], tmp_path / f"{model}-w.zarr", **ON_A_WORKER)
        b = open_embedding(
            embed_to_zarr(path, bundles[model], tmp_path / f"{model}.zarr", progress=False)
        )
        for name in a.data_vars:
            np.testing.assert_allclose(
                b[name].values.astype(float), a[name].values.astype(float), atol=1e-5, err_msg=name
            )


@pytest.mark.shared
def test_worldcereal_reader_output(bundles, tmp_path):
    from latentcube.cube.readers import read_worldcereal_patch

    folder = shared_path("worldcereal_s1_s2_training_patches_flanders", "00002806639B424A")
    cube = read_worldcereal_patch(folder, min_valid_fraction=0.5)
    cube = cube.isel(time=slice(0, 14), y=slice(0, 32), x=slice(0, 32))
    path = write_zarr(cube, tmp_path / "wc.zarr")
    for model in ("s2", "fused"):
        _same(path, bundles[model], tmp_path / f"{model}.zarr", **ON_A_WORKER)


@pytest.mark.shared
def test_greenearthnet_reader_output(bundles, tmp_path):
    from latentcube.cube.readers import read_greenearthnet

    nc = sorted(shared_path("greenearthnet_replicated_minicubes").glob("JAS*.nc"))[0]
    cube = read_greenearthnet(nc, resolution=10.0).isel(y=slice(100, 130), x=slice(100, 130))
    clear = cube["s2_valid"].mean(("y", "x")).values > 0.5  # dates with S2 in the crop
    cube = cube.isel(time=np.flatnonzero(clear)[:14])
    path = write_zarr(cube, tmp_path / "gen.zarr")
    _same(path, bundles["s2_4bands"], tmp_path / "e.zarr", **ON_A_WORKER)

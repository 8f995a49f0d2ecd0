"""The curated public API and import laziness."""

from __future__ import annotations

import subprocess
import sys

import latentcube


def test_every_public_name_resolves():
    for name in latentcube.__all__:
        assert getattr(latentcube, name) is not None, name


def test_import_does_not_load_torch():
    code = "import sys, latentcube; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_quickstart_in_python():
    import numpy as np
    import torch

    cube = latentcube.load_demo_cube().isel(x=slice(0, 20), y=slice(0, 20), time=slice(0, 12))
    torch.manual_seed(0)
    model = latentcube.build_autoencoder(latentcube.AutoencoderConfig.preset("tiny")).eval()
    emb = latentcube.embed(cube, model)
    assert emb.shape == (9, 12, 20, 20) and emb.chunks is not None  # lazy
    assert np.isfinite(emb.values[:, 5:7, 7:13, 7:13]).any()

"""Write the stage-1 checkpoint fixture with latentcube 0.1 (commit 1bdd361).

Run against the 0.1 sources, e.g.::

    git worktree add /tmp/lc01 1bdd361
    PYTHONPATH=/tmp/lc01/src python tests/data/checkpoints/make_v0_1.py

It writes ``stage1_tiny_s2_v0.1.pt`` (+ ``.json``) with the 0.1 ``save_checkpoint``,
and ``stage1_tiny_s2_v0.1_io.pt``: an input and the latent the model gave for it, so
tests/test_bundle.py can check that today's ``ModelBundle.load`` reads the released
format to the same model.
"""

from pathlib import Path

import torch

from latentcube.bundle import save_checkpoint
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig

HERE = Path(__file__).resolve().parent

torch.manual_seed(0)
model = build_autoencoder(AutoencoderConfig.preset("tiny", "s2")).eval()
save_checkpoint(
    HERE / "stage1_tiny_s2_v0.1.pt",
    model,
    extra={"provenance": {"written_by": "latentcube 0.1.0 (commit 1bdd361)"}},
)
x = torch.rand(2, 11, 10, 15, 15)
mask = torch.ones(2, 11, 15, 15, dtype=torch.bool)
gaps = torch.full((2, 10), 5)
with torch.no_grad():
    latent = model.encode(x, mask, gaps)
torch.save(
    {"x": x, "mask": mask, "gaps": gaps, "latent": latent}, HERE / "stage1_tiny_s2_v0.1_io.pt"
)

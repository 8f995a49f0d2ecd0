"""Checkpoints: round trip, safe loading and clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch

from latentcube.bundle import load_checkpoint, read_checkpoint, save_checkpoint
from latentcube.errors import ModelError
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, extra={"provenance": {"cube": "x"}})
    return model, path


def test_round_trip_and_sidecar(ckpt):
    model, path = ckpt
    loaded, meta = load_checkpoint(path, expect_bands=model.config.bands, sensor="s2")
    assert loaded.config == model.config and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert meta["provenance"] == {"cube": "x"} and meta["latentcube_version"]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["model_config"]["variant"] == "tiny" and side["bands"][0] == "B02"
    # where the weights were written: CPU capability, threads and versions, in both copies
    env = side["environment"]
    assert env == meta["environment"]
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["packages"]["torch"] == torch.__version__ and env["cpu"]


def test_loads_with_weights_only(ckpt):
    _, path = ckpt
    torch.load(path, weights_only=True)  # plain types only: no pickled code


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(ckpt, tmp_path):
    _, path = ckpt
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_checkpoint(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(ModelError, match="not a readable latentcube checkpoint"):
        load_checkpoint(bad)


def test_foreign_torch_file(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, p)
    with pytest.raises(ModelError, match="not a latentcube checkpoint"):
        load_checkpoint(p)


def test_other_band_set_or_sensor(ckpt):
    _, path = ckpt
    with pytest.raises(ModelError, match="trained on bands"):
        load_checkpoint(path, expect_bands=("B02", "B03", "B04"))
    with pytest.raises(ModelError, match="is a 's2' model"):
        load_checkpoint(path, sensor="s1")


def test_future_format_version(ckpt, tmp_path):
    _, path = ckpt
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta_json"])
    meta["format_version"] = 99
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(ModelError, match="format version 99"):
        read_checkpoint(tmp_path / "v99.pt")


def test_weights_that_do_not_fit(ckpt, tmp_path):
    _, path = ckpt
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match="weights do not fit"):
        load_checkpoint(tmp_path / "broken.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused_without_advice_to_load_it_anyway(tmp_path, capsys):
    from latentcube.bundle import ModelBundle

    bad = tmp_path / "hostile.pt"
    torch.save({"meta_json": "{}", "state_dict": {}, "x": _Payload()}, bad)
    with pytest.raises(ModelError) as err:
        ModelBundle.load(bad)
    msg = str(err.value)
    assert str(bad) in msg and "pickled Python objects" in msg and "print" in msg
    assert "weights_only" not in msg and "\n" not in msg
    assert "this must never run" not in capsys.readouterr().out

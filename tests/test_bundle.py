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


def test_released_checkpoints_still_load_as_bundles():
    from pathlib import Path

    from latentcube.bundle import ModelBundle, default_model_path

    data = Path(__file__).parent / "data" / "checkpoints"
    stage1 = ModelBundle.load(data / "stage1_tiny_s2_v0.1.pt")  # written by 0.1's save_checkpoint
    assert stage1.kind == "autoencoder" and stage1.sensors == ("s2",)
    assert stage1.latent_dim == 9 and stage1.supports_dense and stage1.variant == "tiny"
    io = torch.load(data / "stage1_tiny_s2_v0.1_io.pt", weights_only=True)
    with torch.no_grad():
        latent = stage1.model.encode(io["x"], io["mask"], io["gaps"])
    torch.testing.assert_close(latent, io["latent"], rtol=0, atol=1e-6)
    fused = ModelBundle.load(default_model_path())  # the shipped default model, a folder
    assert fused.kind == "fusion" and fused.sensors == ("s2", "s1") and fused.latent_dim == 7
    assert fused.bands["s1"] == ("VV", "VH") and len(fused.bands["s2"]) == 10
    assert fused.supports_dense and fused.path.name == "model.pt"
    with pytest.raises(ModelError, match="fusion"):
        ModelBundle.load(default_model_path(), kind="autoencoder")


def test_a_bundle_round_trips_whatever_its_kind(tmp_path):
    from latentcube.bundle import ModelBundle, default_model_path

    for src in (default_model_path(), None):
        if src is None:
            model = build_autoencoder(AutoencoderConfig.preset("tiny", "s1")).eval()
            bundle = ModelBundle(model, {"provenance": {"x": 1}})
        else:
            bundle = ModelBundle.load(src)
        out = bundle.save(tmp_path / f"{bundle.kind}.pt", extra={"note": "copy"})
        again = ModelBundle.load(out)
        assert again.kind == bundle.kind and again.bands == bundle.bands
        assert again.meta["note"] == "copy"
        for (k, a), b in zip(
            bundle.model.state_dict().items(), again.model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), k


def test_fused_bundle_weights_that_do_not_fit(tmp_path):
    from latentcube.bundle import load_fusion_checkpoint, save_fusion_checkpoint
    from latentcube.models.fusion import FusionConfig, FusionModel

    torch.manual_seed(0)
    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes)
    path = save_fusion_checkpoint(tmp_path / "fused.pt", model)
    loaded, _ = load_fusion_checkpoint(path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match="weights do not fit"):
        load_fusion_checkpoint(tmp_path / "broken.pt")

"""Output whitening: the fitted map whitens, decoders undo it, old files load as identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcube.bundle import ModelBundle
from latentcube.data.multisensor import extract_fusion_windows
from latentcube.data.windows import CubeArrays, extract_windows
from latentcube.inference import embed_block, embed_windows
from latentcube.models.autoencoder import build_autoencoder
from latentcube.models.config import AutoencoderConfig
from latentcube.models.fusion import FusionConfig, FusionModel
from latentcube.models.whitening import Whitening
from latentcube.training.fusion import fit_fusion_whitening
from latentcube.training.stage1 import fit_whitening

from conftest import tiny_cube


def _cov(z: torch.Tensor) -> np.ndarray:
    return np.cov(z.double().numpy().T)


def test_fit_by_hand():
    """On correlated samples: zero mean, identity covariance, variances descending and
    equal to the covariance's eigenvalues, and the inverse recovers the samples."""
    rng = np.random.default_rng(0)
    mix = np.array([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.2, -0.3, 0.1]])
    x = torch.from_numpy(rng.normal(size=(5000, 3)) @ mix.T + [1.0, -2.0, 0.5]).float()
    w = Whitening(3)
    assert w(x) is x and w.inverse_transform(x) is x and not w.is_fitted  # identity: free
    w.fit_(x)
    e = w(x)
    assert np.allclose(e.double().mean(0).numpy(), 0, atol=1e-4)
    assert np.allclose(_cov(e), np.eye(3), atol=1e-3)
    want = np.sort(np.linalg.eigvalsh(np.cov(x.double().numpy().T)))[::-1]
    assert np.allclose(w.variance.numpy(), want, rtol=1e-4)
    assert torch.allclose(w.inverse_transform(e), x, atol=1e-4)
    # the first axis is the dominant direction (that of the first, largest column of mix)
    first = w.inverse[:, 0] / w.inverse[:, 0].norm()
    assert float(first[0]) > 0.7 and float(first[1]) > 0.5


def test_fit_refuses_bad_samples():
    w = Whitening(3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        w.fit_(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="more than 3 samples"):
        w.fit_(torch.randn(3, 3))
    x = torch.randn(50, 3)
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        w.fit_(x)
    assert not w.is_fitted
    # a dimension without variance is floored, not divided by zero
    y = torch.randn(100, 3)
    y[:, 2] = 1.0
    assert torch.isfinite(Whitening(3).fit_(y)(y)).all()


@pytest.fixture(scope="module")
def cube():
    return tiny_cube(n_time=15, ny=26, nx=23, seed=2, cloud_fraction=0.2)


def test_autoencoder_whitening_keeps_reconstructions_and_the_dense_path(cube, tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny")).eval()
    win = extract_windows(cube, "s2", stride_t=2, stride_xy=2, seed=0)
    x, m, g = (torch.from_numpy(a) for a in win.batch(np.arange(len(win))))
    with torch.no_grad():
        raw = model.encode(x, m, g)
        recon = model.decode(raw, g)
    fit_whitening(model, win)
    with torch.no_grad():
        z = model.encode(x, m, g)
        recon_w = model.decode(z, g)
        centre_w = model.decode_centre(z, g)
    w = model.whitening
    # the latents are the affine map of the raw ones, with identity covariance
    assert torch.allclose(z, (raw - w.mean) @ w.matrix.T, atol=1e-5)
    assert np.allclose(_cov(z), np.eye(z.shape[1]), atol=1e-3)
    assert float((z < 0).float().mean()) > 0.2  # no longer Softplus-positive
    # decoders undo the map: reconstructions as before, up to float rounding
    assert torch.allclose(recon_w, recon, atol=1e-5)
    c = model.config
    mid = recon[:, c.n_dates // 2, :, c.window // 2, c.window // 2]
    assert torch.allclose(centre_w, mid, atol=1e-5)
    # dense inference and explicit windows agree for a whitened model too
    arr = CubeArrays.from_cube(cube, "s2")
    a, _ = embed_block(model, arr.data, arr.valid, arr.days)
    b, _ = embed_windows(model, arr.data, arr.valid, arr.days)
    ok = np.isfinite(b)
    assert ok.any() and np.array_equal(ok, np.isfinite(a))

    # compared in the raw latent: whitening scales float rounding by 1 / sd of the
    # weakest axis, which is large for an untrained model
    def raw_of(e):
        return w.inverse_transform(torch.from_numpy(np.moveaxis(e, 0, -1)[ok[0]])).numpy()

    assert np.allclose(raw_of(a), raw_of(b), atol=1e-5)
    # saved and loaded with its whitening
    ModelBundle(model).save(tmp_path / "w.pt")
    loaded = ModelBundle.load(tmp_path / "w.pt").model
    assert loaded.whitening.is_fitted
    with torch.no_grad():
        assert torch.equal(loaded.encode(x, m, g), z)


def test_files_without_whitening_load_as_identity(tmp_path):
    """Checkpoints written before the whitening buffers existed load unchanged."""
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig.preset("tiny"))
    path = ModelBundle(model).save(tmp_path / "old.pt")
    ck = torch.load(path, weights_only=True)
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if "whitening" not in k}
    torch.save(ck, path)
    loaded = ModelBundle.load(path).model
    assert not loaded.whitening.is_fitted
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # other missing weights are still refused
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if "to_latent" not in k}
    torch.save(ck, path)
    with pytest.raises(Exception, match="weights do not fit"):
        ModelBundle.load(path)


def test_fusion_whitening_keeps_reconstructions(tmp_path):
    torch.manual_seed(0)
    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes).eval()
    cube = tiny_cube(n_time=16, ny=24, nx=24, seed=1)
    win = extract_fusion_windows(cube, ("s2", "s1"), mode="consecutive", stride_t=2, stride_xy=2)
    b = win.tensors(np.arange(len(win)))
    with torch.no_grad():
        before = model(b)
    fit_fusion_whitening(model, win)
    assert not any(model.autoencoder(s).whitening.is_fitted for s in ("s2", "s1"))
    with torch.no_grad():
        after = model(b)
    ok = torch.isfinite(before.embedding).all(1)
    w = model.whitening
    want = (before.embedding[ok] - w.mean) @ w.matrix.T
    assert torch.allclose(after.embedding[ok], want, atol=1e-5)
    # unit variance on every axis above the floor (an untrained model has a degenerate one)
    cov = _cov(after.embedding[ok])
    strong = (w.variance > 1e-6 * w.variance[0] * 1.01).numpy()
    assert strong[:5].all()
    assert np.allclose(cov[np.ix_(strong, strong)], np.eye(strong.sum()), atol=1e-3)
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3)
    for s in before.recon:
        assert torch.allclose(after.recon[s], before.recon[s], atol=1e-5), s
    ModelBundle(model).save(tmp_path / "f.pt")
    loaded = ModelBundle.load(tmp_path / "f.pt", kind="fusion").model
    with torch.no_grad():
        again = loaded(b).embedding
    assert torch.equal(again[ok], after.embedding[ok])


def test_a_run_started_before_whitening_existed_resumes(tmp_path):
    """``last.pt`` without whitening buffers (an older version's run) resumes, and the
    resumed run ends with the weights of an uninterrupted run."""
    from latentcube.training import AutoencoderTask, TrainConfig, fit

    cube = tiny_cube(n_time=16, ny=24, nx=24, seed=0)
    win = extract_windows(cube, "s2", stride_t=3, stride_xy=3, seed=0)
    tr, va = win.subset(np.arange(0, len(win), 2)), win.subset(np.arange(1, len(win), 2))
    two = TrainConfig(lr=3e-3, warmup_steps=2, batch_size=16, max_epochs=2, seed=0)
    mcfg = AutoencoderConfig.preset("tiny")
    # a time budget (not part of the run's identity) stops the first call after one epoch
    first = fit(
        AutoencoderTask(mcfg, tr, va),
        two.model_copy(update={"max_seconds": 1e-6}),
        tmp_path / "a",
        progress=False,
    )
    assert first.epochs == 1
    last = tmp_path / "a" / "last.pt"
    ck = torch.load(last, weights_only=True)
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if "whitening" not in k}
    ck["training_state"]["state"]["stopped"] = ""  # as if killed after the epoch
    torch.save(ck, last)
    res = fit(AutoencoderTask(mcfg, tr, va), two, tmp_path / "a", progress=False)
    assert res.epochs == 2
    ref = fit(AutoencoderTask(mcfg, tr, va), two, tmp_path / "b", progress=False)
    got = ModelBundle.load(tmp_path / "a" / "last.pt").model
    want = ModelBundle.load(tmp_path / "b" / "last.pt").model
    for k, v in want.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    assert res.best_val == ref.best_val


def test_a_failed_refit_leaves_the_fitted_whitening():
    from latentcube.models.whitening import fit_on_outputs

    w = Whitening(3).fit_(torch.randn(200, 3) @ torch.tensor([[2.0, 0, 0], [1, 1, 0], [0, 0, 1]]))
    before = {k: v.clone() for k, v in w.state_dict().items()}

    def bad(idx):
        assert not w.is_fitted  # outputs are computed with the whitening off
        return torch.full((len(idx), 3), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        fit_on_outputs(w, 50, bad, max_windows=20, seed=0, batch_size=8)
    with pytest.raises(ValueError, match="no windows"):
        fit_on_outputs(w, 0, bad, max_windows=20, seed=0, batch_size=8)
    for k, v in w.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_whiten_command_knows_every_field_the_checkpoint_writers_set(tmp_path):
    """``latentcube whiten`` carries a checkpoint's metadata over except what the
    writers set themselves (``training.whitening._OWN_META``); a field a writer adds later must be
    listed there too, or the whitened copy would keep the source's stale value."""
    import json

    from latentcube.training.whitening import _OWN_META

    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}
    fused = FusionModel(FusionConfig.for_autoencoders(aes), aes)
    written = set()
    for path in (
        ModelBundle(aes["s2"]).save(tmp_path / "s2.pt"),
        ModelBundle(fused).save(tmp_path / "f.pt"),
    ):
        keys = set(json.loads(path.with_suffix(".json").read_text()))
        assert keys - _OWN_META == set(), path.name
        written |= keys
    assert _OWN_META - written == set()  # no stale names either

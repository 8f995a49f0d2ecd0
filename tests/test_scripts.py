"""Helpers of the scripts in scripts/ that the docs' numbers depend on."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_earlier_run_names_the_epoch_of_the_scored_checkpoint(tmp_path):
    """The run's length from its last row; the scored best.pt from its best epoch (the
    first of equal ones, as training keeps a new best only when it is lower)."""
    rows = [(1, 32, 0.3), (2, 64, 0.1), (3, 96, 0.1), (4, 128, 0.2)]
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "val_centre_mae"])
        w.writerows(rows)
    ckpt, row = _script("train_stage1").earlier_run(tmp_path)
    assert ckpt == tmp_path / "best.pt"
    assert (row["epoch"], row["step"]) == ("4", "128")
    assert (row["best_epoch"], row["best_step"], float(row["best_val"])) == ("2", "64", 0.1)


def test_probe_screen_pairs_with_an_earlier_run_on_the_same_folds_only(tmp_path):
    """``evaluate_probes.py --pair-with``: paired per repeat, refused for other folds."""
    import json

    import pytest

    probes = _script("evaluate_probes")

    def sc(*f1):
        return {"knn": {"macro_f1": sum(f1) / len(f1), "macro_f1_repeats": list(f1)}}

    common = {"n_samples": 100, "n_blocks": 9, "class_counts": {"1": 60, "2": 40}, "repeats": 2}
    earlier = {"scores": {"emb / series": sc(0.1, 0.1), "PCA-7 / series": sc(0.70, 0.60)}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {"seed": 42}, "croptype": {**earlier, **common}}))
    screen = {"scores": {"emb / series": sc(0.72, 0.58)}, **common}
    got = probes.pair_with_earlier(screen, path, tmp_path / "p.json", 42)
    d = got["emb / series"]["PCA-7 / series"]["knn"]  # +0.02 and -0.02
    assert abs(d["mean"]) < 1e-12 and d["wins"] == 1 and d["repeats"] == 2
    assert list(got["emb / series"]) == ["PCA-7 / series"]  # not with its own earlier score
    assert json.loads((tmp_path / "p.json").read_text())["paired"] == got
    with pytest.raises(SystemExit, match="seed"):
        probes.pair_with_earlier(screen, path, tmp_path / "p.json", 43)
    with pytest.raises(SystemExit, match="n_samples"):
        probes.pair_with_earlier({**screen, "n_samples": 99}, path, tmp_path / "p.json", 42)


def test_probe_model_windows_split_by_cube_or_by_blocks_of_each_cube():
    """``--split-by block``: every cube gives training and validation windows, and no
    validation window overlaps a training window of its cube; ``cube``: whole cubes."""
    import numpy as np
    import pytest

    from conftest import tiny_cube

    probes = _script("evaluate_probes")
    cubes = [tiny_cube(n_time=24, ny=35, nx=35, seed=s) for s in (1, 2)]
    bands = tuple(str(b) for b in cubes[0]["band"].values)
    tr, va = probes.probe_model_windows(cubes, bands, seed=42, stride_xy=2, split_by="cube")
    assert len(set(tr.cube_id.tolist())) == 1 and len(set(va.cube_id.tolist())) == 1
    tr, va = probes.probe_model_windows(cubes, bands, seed=42, stride_xy=2, split_by="block")
    assert set(tr.cube_id.tolist()) == {0, 1} == set(va.cube_id.tolist())
    for c in (0, 1):
        foot = np.zeros((35, 35), bool)
        for y, x in zip(tr.iy[tr.cube_id == c], tr.ix[tr.cube_id == c], strict=True):
            foot[y : y + 15, x : x + 15] = True
        for y, x in zip(va.iy[va.cube_id == c], va.ix[va.cube_id == c], strict=True):
            assert not foot[y : y + 15, x : x + 15].any()
    with pytest.raises(ValueError, match="split_by"):
        probes.probe_model_windows(cubes, bands, seed=42, stride_xy=2, split_by="pixel")


def test_loss_overrides_of_the_probe_script():
    """``--loss FIELD=VALUE``: the S2 weights with those fields replaced, bad items named."""
    import pytest

    from latentcube.models.config import LossConfig

    probes = _script("evaluate_probes")
    assert probes.parse_loss([]) == {}
    assert probes.parse_loss(["temporal_decay=0.7", "spatial_scale=3e-1"]) == {
        "temporal_decay": 0.7,
        "spatial_scale": 0.3,
    }
    cfg = LossConfig.from_overrides("s2", ["temporal_decay=0.7"])
    assert cfg.temporal_decay == 0.7 and cfg.lambda_sam == LossConfig.for_sensor("s2").lambda_sam
    s1 = LossConfig.from_overrides("s1", ["spatial_decay=0.5"])
    assert (s1.lambda_sam, s1.lambda_center, s1.spatial_decay) == (0.0, 1.5, 0.5)
    with pytest.raises(SystemExit, match=r"'temporal=0\.7'.*temporal_decay"):
        probes.parse_loss(["temporal=0.7"])
    with pytest.raises(SystemExit, match=r"'temporal_decay=high'.*not a number"):
        probes.parse_loss(["temporal_decay=high"])
    with pytest.raises(SystemExit, match=r"'temporal_decay'.*FIELD=VALUE"):
        probes.parse_loss(["temporal_decay"])


def test_probe_window_option_embeds_the_pixels_of_the_15px_model():
    """``--window``: every spatial encoder has the window as receptive field, and its
    embedding, masked by ``same_pixels``, is finite on exactly the pixels (and dates)
    where the 15 px model's is, so the probe's samples and folds stay the same."""
    import numpy as np
    import torch

    from latentcube.inference import embed
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig

    from conftest import tiny_cube

    probes = _script("evaluate_probes")
    cube = tiny_cube(n_time=14, ny=24, nx=22, seed=3)
    bands = tuple(str(b) for b in cube["band"].values)
    finite = {}
    for w, enc in probes.SPATIAL_ENCODERS.items():
        cfg = AutoencoderConfig.model_validate(
            {**AutoencoderConfig.preset("tiny", "s2", bands=bands).model_dump(), "window": w, **enc}
        )
        torch.manual_seed(0)
        emb = embed(cube, build_autoencoder(cfg).eval(), sensor="s2", with_error=False)
        raw = np.isfinite(emb.values).all(axis=0)
        finite[w] = np.isfinite(probes.same_pixels(emb).values).all(axis=0)
        if w < 15:
            assert raw.sum() > finite[w].sum()  # the smaller window embeds nearer the edge
    assert finite[15].any()
    for w in probes.SPATIAL_ENCODERS:
        np.testing.assert_array_equal(finite[w], finite[15])


def test_s2_pixel_dates_keeps_the_fused_embedding_where_s2_contributed():
    """``--s2-pixel-dates``: the fused embedding stays where S2 was valid at the
    pixel-date, bit for bit, and is NaN where it was made from S1 alone."""
    import numpy as np
    import torch

    from latentcube.inference import embed, embedding_dataset
    from latentcube.models.autoencoder import build_autoencoder
    from latentcube.models.config import AutoencoderConfig
    from latentcube.models.fusion import FusionConfig, FusionModel

    from conftest import tiny_cube

    ep = _script("evaluate_probes")
    cube = tiny_cube(n_time=12, ny=18, nx=18, seed=5, cloud_fraction=0.3)
    torch.manual_seed(0)
    aes = {s: build_autoencoder(AutoencoderConfig.preset("tiny", s)) for s in ("s2", "s1")}
    model = FusionModel(FusionConfig.for_autoencoders(aes), aes).eval()
    ds = embedding_dataset(embed(cube, model, with_error=False)).compute()
    got = ep.s2_pixel_dates(ds, model.config.sensors).values
    full = ds["embedding"].values
    s2v = cube["s2_valid"].values
    cloudy = np.isfinite(full).all(0) & ~s2v  # embedded from S1 alone
    assert cloudy.any() and (np.isfinite(full).all(0) & s2v).any()
    assert np.isnan(got[:, cloudy]).all()
    keep = np.isfinite(got).all(0)
    assert keep.tolist() == (np.isfinite(full).all(0) & s2v).tolist()
    np.testing.assert_array_equal(got[:, keep], full[:, keep])


def test_zero_epochs_give_the_untrained_encoder_of_the_training_seed(tmp_path):
    """``--epochs 0``: the encoder as initialised (the same weights for the same seed,
    others for another), and nothing is trained or written."""
    import torch

    from conftest import tiny_cube

    probes = _script("evaluate_probes")
    cubes = [tiny_cube(n_time=24, ny=35, nx=35, seed=s) for s in (1, 2)]
    bands = tuple(str(b) for b in cubes[0]["band"].values)
    kw = {"latent_dim": 7, "epochs": 0, "seed": 42, "stride_xy": 4, "max_val": 50}
    m1, info, _ = probes.train_s2(cubes, bands, tmp_path / "a", train_seed=1, **kw)
    m1b, _, _ = probes.train_s2(cubes, bands, tmp_path / "b", train_seed=1, **kw)
    m2, _, _ = probes.train_s2(cubes, bands, tmp_path / "c", train_seed=2, **kw)
    a, b, c = (m.state_dict() for m in (m1, m1b, m2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not m1.training and "untrained" in info["model"] and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "stage1", "--s2-stage1-epochs", "1"], "needs --steps export"),
        (["--steps", "export", "--s2-latent-dim", "7"], "needs --s2-stage1-epochs"),
        (["--steps", "export", "--s2-stage1-epochs", "1", "--s2-latent-dim", "0"], ">= 1"),
    ],
)
def test_default_model_script_refuses_inconsistent_fresh_s2_options(
    tmp_path, monkeypatch, args, message
):
    """``--s2-stage1-epochs`` pairs a fresh S2 autoencoder with the shipped S1 one, so it
    needs ``--steps export``; ``--s2-latent-dim`` sizes that fresh autoencoder, so it needs
    ``--s2-stage1-epochs`` and a positive size. Refused before anything is trained or
    written."""
    script = _script("train_default_model")
    monkeypatch.setattr("sys.argv", ["x", "--work", str(tmp_path / "w"), *args])
    with pytest.raises(SystemExit, match=message):
        script.main()
    assert not (tmp_path / "w").exists()


def test_default_model_script_trains_an_s2_autoencoder_of_the_asked_latent_size(
    tmp_path, monkeypatch
):
    """``train_stage1(..., latent_dim=7)`` (``--s2-latent-dim 7``) writes a ``fast`` S2
    checkpoint with a 7-d latent, and the default keeps the sensor's 9."""
    import numpy as np
    import torch

    from latentcube.bundle import ModelBundle

    from conftest import tiny_cube

    script = _script("train_default_model")
    cube = tiny_cube(n_time=12, ny=48, nx=48, seed=3)
    ck7 = script.train_stage1(cube, tmp_path / "z7", "s2", 1, latent_dim=7)
    ck9 = script.train_stage1(cube, tmp_path / "z9", "s2", 1)
    m7, m9 = (ModelBundle.load(ck, sensor="s2").model for ck in (ck7, ck9))
    assert (m7.config.variant, m7.config.latent_dim, m9.config.latent_dim) == ("fast", 7, 9)
    w = m7.config.window
    x = torch.from_numpy(np.random.default_rng(0).random((2, 11, 10, w, w), dtype=np.float32))
    z = m7.encode(x, torch.ones(2, 11, w, w, dtype=torch.bool), torch.full((2, 10), 5))
    assert z.shape == (2, 7)


def test_probe_script_refuses_unknown_only_model_sets(monkeypatch, capsys):
    """A misspelt ``--only-model`` set would score nothing; it is refused, naming the
    known sets (the stage-1 S2 latent among them)."""
    ep = _script("evaluate_probes")
    with pytest.raises(SystemExit):
        ep.main(["--tasks", "croptype", "--only-model", "fused 7-d"])
    err = capsys.readouterr().err
    assert "unknown sets ['fused 7-d']" in err and "'S2 stage-1 latent'" in err


def test_probe_script_sets_the_inner_cv_grids_and_refuses_bad_values(monkeypatch, capsys):
    """``--c-grid`` / ``--knn-grid`` replace the probe grids (sorted, so ties still go to
    the strongest regularisation); zero, negative, infinite or non-numeric values are
    refused before any work."""
    from latentcube.evaluation import probes

    ep = _script("evaluate_probes")
    monkeypatch.setattr(probes, "PARAM_GRIDS", {k: dict(v) for k, v in probes.PARAM_GRIDS.items()})
    assert ep.set_probe_grid("logreg", "0.1,0.001,0.01,0.003") == [0.001, 0.003, 0.01, 0.1]
    assert probes.PARAM_GRIDS["logreg"] == {"C": [0.001, 0.003, 0.01, 0.1]}
    assert ep.set_probe_grid("knn", "3,1,5") == [1, 3, 5]
    assert probes.PARAM_GRIDS["knn"] == {"n_neighbors": [1, 3, 5]}
    for kind, text, msg in [
        ("logreg", "0,1", "finite and > 0: [0.0]"),
        ("logreg", "-1,inf", "finite and > 0: [-1.0, inf]"),
        ("knn", "0,5", ">= 1: [0]"),
        ("knn", "5,x", "not a comma-separated list"),
    ]:
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            ep.set_probe_grid(kind, text)
    with pytest.raises(SystemExit):
        ep.main(["--tasks", "croptype", "--c-grid", "0,1"])
    assert "--c-grid: C must be finite and > 0: [0.0]" in capsys.readouterr().err


def _latentcube_imports(path: Path) -> list[tuple[str, str | None]]:
    import ast

    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latentcube"):
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("latentcube")]
    return out


@pytest.mark.parametrize(
    "path",
    sorted([*(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_scripts_and_benchmarks_import_only_names_that_exist(path: Path) -> None:
    """Every ``latentcube`` name a script or benchmark imports (at the top or inside a
    function; code held in strings for child processes is not parsed) exists in the
    package, so a renamed or removed API cannot leave a script broken unnoticed."""
    import importlib

    missing = []
    for module, name in _latentcube_imports(path):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            missing.append(f"{module} ({err})")
            continue
        if name is None or hasattr(mod, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")
        except ModuleNotFoundError:
            missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports names that do not exist: {missing}"

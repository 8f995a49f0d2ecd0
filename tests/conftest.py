"""Shared fixtures: the real sample data in ../shared/data and tiny generated cubes."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTCUBE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-network", action="store_true", help="run tests that need internet")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-network"):
        return
    skip = pytest.mark.skip(reason="needs internet; pass --run-network")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


def shared_path(*parts: str) -> Path:
    """Path into ../shared/data; skips (locally) or fails (CI) when it is missing.

    CI sets ``LATENTCUBE_REQUIRE_SHARED=1`` so that missing sample data fails
    the run instead of silently skipping the tests that read it.
    """
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"real sample data not found at {path}"
        if os.environ.get("LATENTCUBE_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " (LATENTCUBE_REQUIRE_SHARED=1)")
        pytest.skip(msg + "; set LATENTCUBE_SHARED_DATA or check out ../shared")
    return path


@pytest.fixture
def shared() -> type:
    """Access to ``shared_path`` as a fixture (``shared.path("folder", "file")``)."""

    class _Shared:
        path = staticmethod(shared_path)

    return _Shared


def tiny_cube(
    n_time: int = 14,
    ny: int = 24,
    nx: int = 20,
    seed: int = 0,
    with_s1: bool = True,
    cloud_fraction: float = 0.1,
):
    """A small, valid, seeded cube in the data model (generated, not real data)."""
    from latentcube.cube.schema import make_cube, provenance
    from latentcube.sensors import S2_BANDS

    rng = np.random.default_rng(seed)
    steps = np.cumsum(rng.integers(3, 12, n_time)).astype("timedelta64[D]")
    t = np.datetime64("2020-03-01") + steps
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    base = 0.05 + 0.3 * (np.sin(yy / 5.0) * np.cos(xx / 7.0) + 1) / 2
    season = np.sin(np.linspace(0, np.pi, n_time))
    s2 = np.empty((n_time, len(S2_BANDS), ny, nx), np.float32)
    for b in range(len(S2_BANDS)):
        s2[:, b] = base[None] * (1 + 0.1 * b) * (0.6 + 0.4 * season[:, None, None])
    s2 += rng.normal(0, 0.01, s2.shape).astype(np.float32)
    s2 = np.clip(s2, 0, 1)
    valid = rng.random((n_time, ny, nx)) > cloud_fraction
    kw = {}
    if with_s1:
        s1 = np.clip(0.5 + 0.2 * rng.standard_normal((n_time, 2, ny, nx)), 0, 1).astype(np.float32)
        kw = {
            "s1": s1,
            "s1_valid": np.ones((n_time, ny, nx), bool),
            "s1_time": t + np.timedelta64(1, "D"),
        }
    x = 500005.0 + 10 * np.arange(nx)
    y = 5600005.0 - 10 * np.arange(ny)
    return make_cube(
        s2,
        valid,
        time=t,
        y=y,
        x=x,
        crs="EPSG:32631",
        bands=S2_BANDS,
        attrs=provenance("tests.conftest.tiny_cube", seed=seed),
        **kw,
    )


def spy(monkeypatch, owner, name, note=lambda *args: args[0]):
    """Record ``note(*args)`` at every call of ``owner.<name>``, which still runs."""
    calls = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(note(*args))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def embed_to_zarr_in_process(cube_path, model_path, out, **kw):
    """``embed_to_zarr`` on one in-process worker, without a progress bar (tests)."""
    from latentcube.inference import embed_to_zarr

    return embed_to_zarr(
        cube_path, model_path, out, **{"workers": 1, "processes": False, "progress": False, **kw}
    )


def pretend_unfinished(out):
    """Make the complete store ``out`` look like a run stopped half way (its markers folder
    present, the store's completion attribute False), as a killed ``embed_to_zarr`` leaves it."""
    import zarr

    from latentcube.embedding_store import COMPLETE_ATTR
    from latentcube.inference import progress_dir

    progress_dir(out).mkdir()
    zarr.open_group(out, mode="r+", zarr_format=3).attrs.update({COMPLETE_ATTR: False})


@pytest.fixture
def cube():
    """A fresh tiny cube (14 dates, 24 x 20 px, S1 and S2)."""
    return tiny_cube()


def snapshot(*roots: Path) -> dict[str, bytes]:
    """The bytes of every file under ``roots`` (files or folders).

    Taken before and after a refused command, so the bad-input tests can check that
    every file that was there is byte for byte as it was. Keyed by the path relative
    to the folder when one folder is given (``snapshot(out)["best.pt"]``), else by path.
    """
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            one_folder = len(roots) == 1 and root.is_dir()
            out[str(f.relative_to(root)) if one_folder else str(f)] = f.read_bytes()
    return out

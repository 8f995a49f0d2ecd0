"""The shipped default model embeds the bundled cube to the recorded bytes.

The reference (tests/data/default_embedding_reference.json) is written by
scripts/default_embedding_reference.py. On a CPU of the recorded kind the bytes must
be identical; on another kind (AVX2 against AVX-512 torch kernels) the values must
agree to float rounding.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "default_embedding_reference.json"


def _script():
    spec = importlib.util.spec_from_file_location(
        "default_embedding_reference", ROOT / "scripts" / "default_embedding_reference.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_default_model_embeds_bundled_cube_to_recorded_bytes():
    ref = json.loads(REFERENCE.read_text())
    now = _script().fingerprint()
    assert sorted(now["variables"]) == sorted(ref["variables"])
    for name, r in ref["variables"].items():
        n = now["variables"][name]
        assert n["shape"] == r["shape"] and n["n_nan"] == r["n_nan"], name
        got = np.array([np.nan if v is None else v for v in n["sample"]], dtype=np.float64)
        want = np.array([np.nan if v is None else v for v in r["sample"]], dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, equal_nan=True, err_msg=name)
    if now["cpu_capability"] == ref["cpu_capability"]:
        assert now["sha256"] == ref["sha256"]

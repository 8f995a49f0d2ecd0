"""Record what the shipped default model embeds the bundled sample cube to.

Writes ``tests/data/default_embedding_reference.json``: the SHA-256 of the in-memory
embedding's bytes (every variable, float32, C order), the CPU capability torch used
(the bytes are identical on one kind of CPU, not across AVX2 and AVX-512 kernels),
and per-feature sums and a strided sample of values for a tolerance check elsewhere.
``tests/test_default_embedding.py`` recomputes it, so any change to loading, the
engine or the model that moves a single bit on this CPU fails the suite.

Run: ``python scripts/default_embedding_reference.py``
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "default_embedding_reference.json"


def fingerprint() -> dict[str, Any]:
    """Embed the bundled cube with the default model in memory and summarise the result."""
    import latentcube as lc

    cube = lc.load_demo_cube()
    ds = _embed(cube, lc.default_model_path())
    digest = hashlib.sha256()
    out: dict[str, Any] = {"variables": {}}
    for name in sorted(ds.data_vars):
        a = np.ascontiguousarray(ds[name].values.astype(np.float32))
        digest.update(name.encode())
        digest.update(a.tobytes())
        flat = a.ravel()
        out["variables"][name] = {
            "shape": list(a.shape),
            "nansum": float(np.nansum(a, dtype=np.float64)),
            "n_nan": int(np.isnan(a).sum()),
            "sample": [
                None if np.isnan(v) else float(v) for v in flat[:: max(1, flat.size // 512)]
            ],
        }
    out["sha256"] = digest.hexdigest()
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def _embed(cube: Any, model_path: Path) -> Any:
    """The in-memory embedding of ``cube`` with the bundle at ``model_path``."""
    from latentcube.bundle import ModelBundle
    from latentcube.inference import embed, embedding_dataset

    return embedding_dataset(embed(cube, ModelBundle.load(model_path))).compute()


def main() -> None:
    """Write the reference file."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fingerprint(), indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

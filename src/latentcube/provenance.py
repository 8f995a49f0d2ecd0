"""Where something was computed: the machine and package versions behind a result.

Trained weights, and so every score downstream of them, are bit-identical for
the same code, seed and thread count on one machine, but not across CPUs whose
vector instructions differ (PyTorch makes no such promise). Checkpoints and
evaluation reports therefore record :func:`environment`.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

__all__ = ["environment"]


def environment() -> dict[str, Any]:
    """Platform, CPU model, package versions and torch's CPU capability and threads.

    Nothing is imported for this: torch's CPU capability and thread count are
    read only when torch is already loaded.

    Returns
    -------
    dict
        ``platform``, ``cpu``, ``packages`` (name -> version of the installed ones
        among numpy, torch, scikit-learn, xarray, zarr, statsmodels) and, with torch
        loaded, ``torch_cpu_capability`` and ``torch_threads``.
    """
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
            cpu = next(names, cpu)
    except OSError:
        pass
    packages = {}
    for name in ("numpy", "torch", "scikit-learn", "xarray", "zarr", "statsmodels"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "packages": packages}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["torch_threads"] = torch.get_num_threads()
    return env

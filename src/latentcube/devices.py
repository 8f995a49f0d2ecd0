"""Devices and numeric precision: where ``--device`` and ``--precision`` become torch objects.

Every command that runs a model (``train``, ``embed``, ``evaluate``) takes
``--device auto|cpu|cuda|cuda:N|mps`` and resolves it here; training also takes
``--precision 32|bf16|16-mixed``. Checkpoints are always written from CPU tensors,
so a model trained on a GPU loads unchanged on a CPU and the other way round.

Examples
--------
>>> from latentcube.devices import resolve_device, autocast
>>> dev = resolve_device("cpu")
>>> with autocast(dev, "bf16"):
...     pass
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch

from latentcube.errors import ModelError

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DeviceError",
    "Precision",
    "autocast",
    "available_devices",
    "check_precision",
    "grad_scaler",
    "resolve_device",
]

#: The device names a user may give (``cuda:N`` picks one GPU).
DEVICES = ("auto", "cpu", "cuda", "mps")

Precision = Literal["32", "bf16", "16-mixed"]
#: The precisions training accepts: full fp32, bf16 autocast, fp16 autocast with loss scaling.
PRECISIONS: tuple[str, ...] = get_args(Precision)


class DeviceError(ModelError):
    """A device or precision was asked for that this machine or this torch cannot give."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices torch can use here, best first (``cuda:0`` ..., ``mps``, ``cpu``)."""
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = [f"cuda:{i}" for i in range(n_gpus)]
    if _mps_available():
        out.append("mps")
    return [*out, "cpu"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device name into a :class:`torch.device` that exists here.

    Parameters
    ----------
    spec
        ``"auto"`` (or ``None``: the first of CUDA, MPS, CPU that is available),
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a :class:`torch.device`.

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceError
        The name is unknown, or the device is not available on this machine (the
        message lists those that are).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise DeviceError(f"unknown device {spec!r}: use one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(
                f"device {spec!r} asked for but torch sees no CUDA GPU here "
                f"(available: {', '.join(available_devices())}; torch {torch.__version__})"
            )
        if index and int(index) >= n:
            raise DeviceError(f"device {spec!r} asked for but only {n} CUDA GPU(s) are visible")
    if kind == "mps" and not _mps_available():
        raise DeviceError(
            f"device 'mps' asked for but it is not available here "
            f"(available: {', '.join(available_devices())})"
        )
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> Precision:
    """Validate a precision name for a device.

    ``16-mixed`` (fp16 autocast with a gradient scaler) needs CUDA; ``bf16`` runs on
    CPU and on GPUs that support it; ``32`` runs everywhere.

    Raises
    ------
    DeviceError
        The name is unknown or the device cannot run it.
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "16-mixed" and device.type != "cuda":
        raise DeviceError(
            f"precision '16-mixed' needs a CUDA GPU (device is {device}); use 'bf16' or '32'"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{device} does not support bf16; use '16-mixed' or '32'")
    return precision  # type: ignore[return-value]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "32") -> Iterator[None]:
    """Run the enclosed forward pass in ``precision`` on ``device`` (no-op for ``"32"``)."""
    if precision == "32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device, precision: str = "32") -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for ``16-mixed`` on CUDA (a pass-through otherwise)."""
    enabled = precision == "16-mixed" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)

"""Device and precision names resolve on this machine, and refuse what it cannot give."""

from __future__ import annotations

import pytest
import torch

from latentcube.devices import (
    DeviceError,
    autocast,
    available_devices,
    check_precision,
    grad_scaler,
    resolve_device,
)


def test_auto_is_the_best_available_device() -> None:
    assert str(resolve_device("auto")) == available_devices()[0]
    assert resolve_device(None) == resolve_device("auto")
    assert available_devices()[-1] == "cpu"


def test_cpu_and_torch_device_pass_through() -> None:
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cpu:0", "cuda:x", "tpu"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_what_is_available() -> None:
    with pytest.raises(DeviceError, match=r"no CUDA GPU.*available: .*cpu"):
        resolve_device("cuda")


def test_precision_checks() -> None:
    cpu = torch.device("cpu")
    assert check_precision("32", cpu) == "32"
    assert check_precision("bf16", cpu) == "bf16"
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        check_precision("16-mixed", cpu)
    with pytest.raises(DeviceError, match="unknown precision"):
        check_precision("fp8", cpu)


def test_bf16_autocast_on_cpu_runs_matmuls_in_bf16() -> None:
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    with autocast(cpu, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(cpu, "32"):
        assert (a @ a).dtype == torch.float32


def test_grad_scaler_is_a_pass_through_off_cuda() -> None:
    scaler = grad_scaler(torch.device("cpu"), "bf16")
    assert not scaler.is_enabled()

"""Device and mixed-precision resolution."""

from __future__ import annotations

import contextlib

import pytest
import torch

from nerveseg_cli.device import autocast_for, resolve_amp, resolve_device
from nerveseg_cli.errors import NervesegError

CPU = torch.device("cpu")


@pytest.mark.parametrize("amp,expected", [("auto", None), ("off", None),
                                          ("bf16", torch.bfloat16)])
def test_amp_on_the_cpu(amp: str, expected: torch.dtype | None) -> None:
    assert resolve_amp(amp, CPU) is expected


def test_fp16_needs_cuda_and_unknown_modes_are_refused() -> None:
    with pytest.raises(NervesegError, match="--amp fp16 needs CUDA"):
        resolve_amp("fp16", CPU)
    with pytest.raises(NervesegError, match="--amp 'fp32': use auto, bf16, fp16 or off"):
        resolve_amp("fp32", CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda() -> None:
    cuda = resolve_device("cuda")
    expected = torch.bfloat16 if torch.cuda.get_device_capability(cuda) >= (8, 0) \
        else torch.float16
    assert resolve_amp("auto", cuda) is expected
    assert resolve_amp("fp16", cuda) is torch.float16


def test_autocast_factory() -> None:
    assert autocast_for(CPU, None) is contextlib.nullcontext
    with autocast_for(CPU, torch.bfloat16)():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16


def test_devices() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(NervesegError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(NervesegError, match="CUDA is not available"):
            resolve_device("cuda:0")

"""Where and how torch runs: the device, mixed precision, and seeding, shared by ``train`` and
``predict``."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from nerveseg_cli.errors import NervesegError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun a plain
    ``cuda`` means this process's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NervesegError(f"--device {name}: CUDA is not available on this machine")
        if local_rank is not None and name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise NervesegError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device``, or None for full precision. ``auto`` is
    bf16 on CUDA when the GPU supports it (else fp16) and off on the CPU."""
    if amp not in AMP_CHOICES:
        raise NervesegError(f"--amp {amp!r}: use {', '.join(AMP_CHOICES[:-1])} or off")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise NervesegError("--amp fp16 needs CUDA; use bf16 or off on the CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast_for(device: torch.device, dtype: torch.dtype | None
                 ) -> Callable[[], AbstractContextManager]:
    """A factory of autocast contexts (a no-op context without mixed precision)."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; ``deterministic`` also forces deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True

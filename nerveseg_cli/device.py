"""Where and how torch runs: the device, mixed precision, and seeding, shared by ``train`` and
``predict``."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from nerveseg_cli.errors import NervesegError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "QUOTA PERIOD" microseconds, or "max PERIOD"


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


# --------------------------------------------------------------------------------------------
# CPU threads
#
# torch runs each operation on a team of intra-op threads that wait for each other at the end
# of it. On cores that other jobs also use, a team as large as the machine waits for its
# descheduled members at every operation: on 2 cores with other work running, one thread made
# a training step 1.8x faster than two (docs/train.md, "Threads"). So the team is sized from
# the cores this process may use and the cores other processes keep busy.


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, a container's cpuset), capped
    by a cgroup CPU quota (``cpu.max``, which os.cpu_count() does not see)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open(CPU_MAX, encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class CpuMeter:
    """How many cores other processes kept busy since the last reading: the machine's busy
    time (/proc/stat) minus this process's own CPU time, over the wall time. Reads 0 where
    /proc/stat is missing (not Linux), which leaves every core to torch."""

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        own = os.times()
        return (sum(fields[:8]) - idle) / ticks, own.user + own.system, time.monotonic()

    def others_busy(self) -> float:
        """Cores busy with other processes since the previous call (or construction)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[2] - last[2] < 0.05:
            return 0.0
        others = (now[0] - last[0]) - (now[1] - last[1])
        return max(0.0, others / (now[2] - last[2]))


def threads_for_load(cores: int, others_busy: float) -> int:
    """Intra-op threads for ``cores`` of which other processes keep ``others_busy`` busy: the
    cores left free, at least one."""
    return max(1, min(cores, cores - math.floor(others_busy + 0.5)))  # 0.5 rounds up


def set_threads(requested: int) -> int | None:
    """Apply ``--threads``: N > 0 is used as given; 0 (auto) honours OMP_NUM_THREADS when set,
    else starts from every available core. Returns the cores that automatic sizing may adapt
    to the load, or None where the count is fixed (given, or set by OMP_NUM_THREADS)."""
    if requested > 0:
        torch.set_num_threads(requested)
        return None
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None  # torch read it at import
    cores = available_cores()
    torch.set_num_threads(cores)
    return cores

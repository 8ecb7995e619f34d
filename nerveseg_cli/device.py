"""Where and how torch runs: the device, mixed precision, and seeding, shared by ``train`` and
``predict``."""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerveseg_cli.errors import NervesegError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "QUOTA PERIOD" microseconds, or "max PERIOD"


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device always
    carries its index. Under torchrun (``local_rank`` given) a plain ``cuda`` is this process's
    own GPU: the LOCAL_RANK-th visible one, or the only one where a launcher gave each process
    its own ``CUDA_VISIBLE_DEVICES``."""
    if name == "auto" and torch.cuda.is_available() and local_rank is None:
        return torch.device("cuda", claim_free_gpu())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise NervesegError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise NervesegError(f"--device {name}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if name != "cuda":
        index = int(name[5:])
    elif local_rank is None:
        index = torch.cuda.current_device()
    else:
        index = 0 if count == 1 else local_rank
    if index >= count:
        whose = f"process LOCAL_RANK {local_rank}" if name == "cuda" else f"--device {name}"
        raise NervesegError(f"{whose}: no such GPU ({count} visible"
                            + (", CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"]
                               if "CUDA_VISIBLE_DEVICES" in os.environ else "") + ")")
    return torch.device("cuda", index)


# --------------------------------------------------------------------------------------------
# one GPU per process
#
# Jobs started side by side on a box with several GPUs (a workflow's train and predict jobs:
# Snakemake counts GPUs but tells a job nothing about which one) each need their own. `--device
# auto` therefore claims a GPU no other nerveseg process of this machine holds: an flock on a
# file named after the GPU's UUID in a folder every process sees, held for the process's life
# (the kernel releases it when the process ends, killed or not).

GPU_LOCKS_ENV = "NERVESEG_GPU_LOCKS"  # the folder of the claims; default: TMPDIR's
_claimed: dict[str, Any] = {}  # this process's claim: its index and lock, kept to the end


def gpu_locks_folder() -> Path:
    folder = Path(os.environ.get(GPU_LOCKS_ENV) or
                  Path(tempfile.gettempdir()) / "nerveseg-gpu-locks")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if folder.stat().st_uid == os.getuid():
            folder.chmod(0o1777)  # every user's jobs claim here; each keeps its own files
    except OSError as exc:
        raise NervesegError(f"{folder}: cannot keep GPU claims there ({exc.strerror}); set "
                            f"{GPU_LOCKS_ENV} to a writable folder, or pass --device cuda:N"
                            ) from None
    return folder


def gpu_key(index: int) -> str:
    """A name of visible GPU ``index`` that is the same in every process, whatever its
    CUDA_VISIBLE_DEVICES: the GPU's UUID."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        return f"gpu-{uuid}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    return f"gpu-{visible[index].strip() if index < len(visible) and visible[index] else index}"


def claim_free_gpu() -> int:
    """The index of a visible GPU no other nerveseg process holds, claimed for this process's
    life (the same index on every call); with every GPU held, the current one is shared, with
    a warning. A single GPU is simply taken."""
    if "index" in _claimed:
        return int(_claimed["index"])
    from nerveseg_cli.errors import warn
    from nerveseg_cli.io.locks import try_lock

    count, index = torch.cuda.device_count(), torch.cuda.current_device()
    if count > 1:
        folder = gpu_locks_folder()
        for candidate in range(count):
            lock = try_lock(folder / f"{gpu_key(candidate)}.lock")
            if lock is not None:
                _claimed["lock"], index = lock, candidate
                break
        else:
            warn(f"--device auto: all {count} visible GPUs are held by other nerveseg "
                 f"processes; sharing cuda:{index}")
    torch.cuda.set_device(index)
    _claimed["index"] = index
    return index


# bf16 runs natively from compute capability 8.0 (Ampere: A100, A10, RTX 30xx; Hopper). Older
# GPUs (T4 7.5, V100 7.0, P100 6.0) only emulate it, slowly, though torch.cuda.is_bf16_supported()
# counts emulation: they get fp16 with a gradient scaler.
BF16_CAPABILITY = (8, 0)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` (a CUDA device) computes bf16 natively: its own capability, not the
    current device's."""
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_CAPABILITY


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device``, or None for full precision. ``auto`` is
    bf16 on a CUDA GPU of compute capability 8.0 or more, fp16 (with a gradient scaler in
    training) on older GPUs, and off on the CPU."""
    if amp not in AMP_CHOICES:
        raise NervesegError(f"--amp {amp!r}: use {', '.join(AMP_CHOICES[:-1])} or off")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
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
    """Seed Python, numpy and torch; ``deterministic`` forces deterministic kernels (and its
    absence lifts an earlier run's choice in the same process)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and torch.cuda.is_available()


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by ``keys`` (e.g. rank, epoch, step) of a run seeded
    with ``seed``: well mixed (numpy's SeedSequence), so neighbouring keys share nothing."""
    words = np.random.SeedSequence([seed % 2**63, *keys]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def step_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: random numbers drawn where they are
    used, so no parameter crosses from the host (a copy that would wait for the GPU)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def seed_global(seed: int, device: torch.device) -> None:
    """Seed torch's global generators of the CPU and of ``device`` (dropout draws from the one
    of the device it runs on); other GPUs are left alone."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)  # the current device's alone


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

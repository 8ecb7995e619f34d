"""ONNX Runtime, from one place: the import (with the install lines when it is missing or both
packages are installed), the providers a ``--device`` asks for, the session, and the check that
the session got the providers asked for (:func:`ort_session`). Used by ``predict --engine
onnxruntime``, ``bench`` and ``export``'s comparison with torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from nerveseg_cli.errors import NervesegError, brief, warn


def ort_threads() -> int:
    """Intra-op threads for ONNX Runtime: ``OMP_NUM_THREADS`` when set (as torch reads it),
    else the cores this process may run on (``os.sched_getaffinity``: a container's or
    ``taskset``'s share, not the machine's count)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"
# ONNX Runtime is an optional extra: the CPU package or the CUDA one, never both (the two
# distributions hold the same module, so the one installed last overwrites the other's files).
ORT_CPU = "pip install 'nerveseg-cli[onnx]'"
ORT_GPU = "pip install 'nerveseg-cli[onnx-gpu]'"
ORT_CLEAN = "pip uninstall -y onnxruntime onnxruntime-gpu"
ORT_QUIET = 3  # ONNX Runtime's severity for errors: its warnings are replaced by nerveseg's
BOTH_INSTALLED = ("both onnxruntime and onnxruntime-gpu are installed, and the one installed last "
                  "overwrote the other")


def import_onnxruntime() -> Any:
    """ONNX Runtime, imported here for the whole package, its default logger set to errors
    (the provider-fallback warnings it logs there are reported by :func:`ort_session`)."""
    try:
        import onnxruntime
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime"
        what = "is not installed" if missing else f"cannot be imported ({brief(exc)})"
        if both_ort_installed():
            raise NervesegError(f"ONNX Runtime {what}: {BOTH_INSTALLED}: {ORT_CLEAN}, then "
                                f"{ORT_CPU} for the CPU or {ORT_GPU} for CUDA") from None
        raise NervesegError(f"ONNX Runtime {what} (nerveseg export and --engine onnxruntime "
                            f"need it): {ORT_CPU} for the CPU, or {ORT_GPU} for CUDA (never "
                            f"both: {ORT_CLEAN} first to switch)") from None
    onnxruntime.set_default_logger_severity(ORT_QUIET)
    return onnxruntime


def both_ort_installed() -> bool:
    """Whether the CPU (``onnxruntime``) and CUDA (``onnxruntime-gpu``) packages are both
    installed: then the module is whichever was installed last, possibly a mix of the two."""
    from importlib import metadata

    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return False
    return True


def _cuda_fix() -> str:
    """How to get a working CUDA provider."""
    both = f"{BOTH_INSTALLED}: " if both_ort_installed() else ""
    return f"{both}{ORT_CLEAN}, then {ORT_GPU}"


def _explicit_cuda(device: str) -> bool:
    return device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())


def ort_providers(device: str) -> list[Any]:
    """The execution providers for ``--device``: CPU, or CUDA (``cuda:N``: that GPU) when this
    onnxruntime has it (the ``onnxruntime-gpu`` package); ``auto``: CUDA if available."""
    onnxruntime = import_onnxruntime()
    available = onnxruntime.get_available_providers()
    cuda = CUDA_PROVIDER in available
    if device == "cpu" or (device == "auto" and not cuda):
        return [CPU_PROVIDER]
    if device == "auto":
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if _explicit_cuda(device):
        if not cuda:
            raise NervesegError(f"--device {device}: this ONNX Runtime has no CUDA provider "
                                f"(only {', '.join(available)}): {_cuda_fix()}; or use "
                                "--device cpu")
        index = int(device[5:]) if ":" in device else 0
        return [(CUDA_PROVIDER, {"device_id": index}), CPU_PROVIDER]
    raise NervesegError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def _wants_cuda(providers: Sequence[Any]) -> bool:
    return any((p[0] if isinstance(p, tuple) else p) == CUDA_PROVIDER for p in providers)


def _preload_cuda(onnxruntime: Any) -> str | None:
    """Load CUDA and cuDNN from pip's ``nvidia-*`` wheels (or torch's) where this ONNX Runtime
    can (1.21 and later): not on the library path, they leave its CUDA provider unloadable and
    the session on the CPU. A failure is returned for :func:`check_session_providers`."""
    if not hasattr(onnxruntime, "preload_dlls"):
        return None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its notices are print()s
            onnxruntime.preload_dlls()
    except Exception as exc:  # noqa: BLE001  ctypes and path errors alike
        return f"preload_dlls failed: {brief(exc)}"
    return None


def check_session_providers(got: Sequence[str], device: str, cuda_version: str = "",
                            preload_error: str | None = None) -> None:
    """A session that was given the CUDA provider and runs without it: an error where
    ``--device`` named CUDA, a warning with ``auto`` (which then runs on the CPU)."""
    if CUDA_PROVIDER in got:
        return
    major = cuda_version.split(".")[0]
    needs = f"the CUDA {major}.x and cuDNN libraries" if major else "the CUDA and cuDNN libraries"
    cause = preload_error or "its CUDA or cuDNN libraries were not found"
    message = (f"the ONNX Runtime session got {', '.join(got) or 'no provider'}, not "
               f"{CUDA_PROVIDER}: {cause}; install {needs} this onnxruntime-gpu needs (torch's "
               "CUDA wheels of that version bring them), or an onnxruntime-gpu built for your CUDA")
    if both_ort_installed():
        message += f"; {BOTH_INSTALLED}: {ORT_CLEAN}, then {ORT_GPU}"
    if device == "auto":
        warn(f"--device auto: running on the CPU: {message}")
    else:
        raise NervesegError(f"--device {device}: {message}; or use --device cpu")


def ort_session(data: bytes, device: str) -> Any:
    """An ONNX Runtime session of a model's bytes (all graph optimisations, quiet logs), on the
    providers ``--device`` asks for and checked to have them (:func:`check_session_providers`).
    """
    onnxruntime = import_onnxruntime()
    providers = ort_providers(device)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = ort_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = ORT_QUIET  # errors only: no provider notices on stderr
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    cuda = _wants_cuda(providers)
    preload_error = _preload_cuda(onnxruntime) if cuda else None
    # A provider that fails to start makes ONNX Runtime print() its fallback to the CPU:
    # stdout may be JSON (bench --json), and the check below reports it anyway.
    with contextlib.redirect_stdout(sys.stderr):
        session = onnxruntime.InferenceSession(data, options, providers=providers)
    if cuda:
        check_session_providers(session.get_providers(), device,
                                getattr(onnxruntime, "cuda_version", ""), preload_error)
    return session

"""Inference engines: what turns a batch of decoded images into probability maps, one model each.

:class:`~nerveseg_cli.predict.Predictor` merges TTA variants and models, gates by presence and
writes; for each model it calls an :class:`Engine`, which brings the images to the model's
geometry, normalises them, runs every TTA variant (each flip inverted), turns the logits into
probabilities and maps them back to each image's size:

- :class:`TorchEngine` (``--engine torch``, the default): a run folder's network in PyTorch, on
  the CPU or a GPU, with autocast and channels-last as ``predict`` always did;
- :class:`OnnxEngine` (``--engine onnxruntime``): an exported model (``nerveseg export``) in an
  ONNX Runtime session, CPU or CUDA provider, with the pre- and post-processing in numpy and
  OpenCV. A run folder given to it is exported on the fly, in memory. Its path from an
  ``.onnx`` file to the maps never imports torch.

:class:`ModelInfo` is what the predictor needs to know about a model, from a run's config.json
or an exported model's sidecar alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError, brief, warn
from nerveseg_cli.export import INPUT, MASK, PRESENCE, is_exported
from nerveseg_cli.geometry import Geometry, normalise_array

if TYPE_CHECKING:
    import torch

    from nerveseg_cli.runs import RunConfig

ENGINES = ("torch", "onnxruntime")
Variant = tuple[bool, bool]  # (flip height, flip width)


@dataclass(frozen=True)
class ModelInfo:
    """A model's preprocessing and outputs, as the predictor needs them."""

    path: Path
    geometry: Geometry
    mean: float
    std: float
    in_channels: int
    classes: Classes | None  # several classes (None: binary)
    multilabel: bool
    has_presence: bool
    inference: dict[str, Any] = field(default_factory=dict)  # the recipe's predict defaults
    training: dict[str, Any] = field(default_factory=dict)  # fold, manifest (--out-of-fold)

    @property
    def softmax(self) -> bool:
        return self.classes is not None and not self.multilabel

    @classmethod
    def from_run(cls, path: Path, config: RunConfig, has_presence: bool) -> ModelInfo:
        return cls(path, config.geometry, config.mean, config.std, config.model.in_channels,
                   config.classes, config.model.multilabel, has_presence,
                   dict(config.inference), dict(config.training))


def read_model_info(path: str | Path) -> ModelInfo:
    """The info of a run folder (config.json) or an exported model (its sidecar), without
    loading the network."""
    path = Path(path)
    if is_exported(path):
        from nerveseg_cli.export import read_sidecar

        return read_sidecar(path).model_info(path)
    from nerveseg_cli.runs import read_config

    config = read_config(path)
    return ModelInfo.from_run(path, config, config.model.presence_head)


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: p = 0, right
        return (1 / (1 + np.exp(-x))).astype(np.float32, copy=False)


def mask_probabilities(logits: np.ndarray, softmax: bool) -> np.ndarray:
    """(N, K, H, W) probability of each foreground class from the mask logits (K = 1: the
    binary map): a softmax over the classes without the background, else a sigmoid."""
    if softmax:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True))[:, 1:]
    return sigmoid(logits)


def flip_array(x: np.ndarray, variant: Variant) -> np.ndarray:
    axes = tuple(a for a, on in zip((-2, -1), variant, strict=True) if on)
    return np.flip(x, axes) if axes else x


class Engine:
    """One model: :meth:`run_batch` turns decoded images into probability stacks."""

    name: str
    info: ModelInfo

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def where(self) -> str:
        """Where it runs, in words (``cpu``, ``cuda:0``, ``CPUExecutionProvider``)."""
        raise NotImplementedError

    def run_batch(self, images: Sequence[np.ndarray], variants: Sequence[Variant]
                  ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Per image a float32 stack at its original size, (V, H, W) or with several classes
        (V, K, H, W) (V = TTA variants, each flipped back), and the presence probabilities
        (N, V) or (N, V, K), or None without a presence head."""
        raise NotImplementedError

    def _split(self, stacked: list[np.ndarray], variants: int) -> list[np.ndarray]:
        if self.info.classes is not None:
            return [s.reshape(variants, -1, *s.shape[1:]) for s in stacked]
        return stacked


# --------------------------------------------------------------------------------------------
# torch


class TorchEngine(Engine):
    """A run folder's network in PyTorch (``predict``'s original path)."""

    name = "torch"

    def __init__(self, info: ModelInfo, model: Any, device: torch.device,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
        from nerveseg_cli.device import autocast_for

        self.info, self.model, self.device = info, model, device
        self.autocast = autocast_for(device, amp_dtype)
        self.channels_last = channels_last

    @classmethod
    def load(cls, run: str | Path, device: torch.device, amp_dtype: torch.dtype | None,
             channels_last: bool) -> TorchEngine:
        import torch

        from nerveseg_cli.runs import load_run

        config, model = load_run(run)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        return cls(ModelInfo.from_run(Path(run), config, model.has_presence), model, device,
                   amp_dtype, channels_last)

    @property
    def where(self) -> str:
        return str(self.device)

    def run_batch(self, images: Sequence[np.ndarray], variants: Sequence[Variant]
                  ) -> tuple[list[np.ndarray], np.ndarray | None]:
        import torch

        from nerveseg_cli.geometry import normalise_input

        info, geometry = self.info, self.info.geometry
        with torch.no_grad():
            batch = np.stack([geometry.forward(image) for image in images])
            x = torch.from_numpy(batch).to(self.device, non_blocking=True).unsqueeze(1).float()
            x = normalise_input(x / 255, info.mean, info.std, info.in_channels,
                                self.channels_last)
            probs, presences = [], []
            for variant in variants:
                with self.autocast():
                    logits, presence = self.model(_flip_tensor(x, variant))
                probs.append(_flip_tensor(self._probabilities(logits.float()), variant))
                if presence is not None:
                    presences.append(torch.sigmoid(presence.float()))
            stacked = torch.cat(probs, dim=1)  # (N, V * K, H', W'): classes within variants
            stacks = [geometry.backward(stacked[i:i + 1], *image.shape)[0].cpu().numpy()
                      for i, image in enumerate(images)]
            presence_array = torch.stack(presences, 1).cpu().numpy() if presences else None
        return self._split(stacks, len(variants)), presence_array

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        if self.info.softmax:
            return torch.softmax(logits, dim=1)[:, 1:]
        return torch.sigmoid(logits)


def _flip_tensor(x: torch.Tensor, variant: Variant) -> torch.Tensor:
    dims = [d for d, on in zip((-2, -1), variant, strict=True) if on]
    return x.flip(dims) if dims else x


# --------------------------------------------------------------------------------------------
# ONNX Runtime


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


class OnnxEngine(Engine):
    """An exported model in ONNX Runtime; numpy and OpenCV around it, no torch."""

    name = "onnxruntime"

    def __init__(self, info: ModelInfo, session: Any, presence: bool) -> None:
        self.info, self.session = info, session
        self.outputs = [MASK, PRESENCE] if presence else [MASK]

    @classmethod
    def load(cls, path: str | Path, device: str) -> OnnxEngine:
        """An exported model, its sidecar checked against it."""
        from nerveseg_cli.export import load_exported

        path = Path(path)
        sidecar, data = load_exported(path)
        try:
            session = ort_session(data, device)
        except NervesegError:
            raise
        except Exception as exc:  # noqa: BLE001  a damaged file fails in many ways
            raise NervesegError(f"{path}: not a readable ONNX model ({brief(exc)})") from None
        engine = cls(sidecar.model_info(path), session, sidecar.presence_channels is not None)
        engine._check_graph(sidecar.mask_channels, sidecar.dynamic_size)
        return engine

    @classmethod
    def export(cls, run: str | Path, device: str) -> OnnxEngine:
        """A run folder, exported in memory first (torch is needed for that step only)."""
        from nerveseg_cli.export import export_bytes

        data, sidecar, _ = export_bytes(run)
        return cls(sidecar.model_info(Path(run)), ort_session(data, device),
                   sidecar.presence_channels is not None)

    def _check_graph(self, mask_channels: int, dynamic_size: bool) -> None:
        """The graph's input and outputs are those the sidecar describes: names, channels, and
        a graph fixed to one size fixed to the sidecar's geometry (a geometry edited in the
        sidecar would resize every image to a size the graph was not made for)."""
        where = self.info.path
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if list(inputs) != [INPUT]:
            raise NervesegError(f"{where}: the model's inputs are {', '.join(inputs)}, not "
                                f"{INPUT!r} as its sidecar says")
        missing = [name for name in self.outputs if name not in outputs]
        extra = sorted(set(outputs) - set(self.outputs))
        if missing or extra:
            raise NervesegError(f"{where}: the model's outputs are {', '.join(outputs)}, but "
                                f"its sidecar says {', '.join(self.outputs)}")
        for what, shape, wanted in (("input", inputs[INPUT], self.info.in_channels),
                                    ("mask_logits", outputs[MASK], mask_channels)):
            if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != wanted):
                raise NervesegError(f"{where}: the model's {what} has shape {shape}, its "
                                    f"sidecar says {wanted} channels")
            geometry = self.info.geometry
            fixed = [side for side in shape[2:] if isinstance(side, int)]
            if fixed and (dynamic_size or shape[2:] != [geometry.height, geometry.width]):
                said = "any height and width" if dynamic_size else \
                    f"the geometry {geometry.width}x{geometry.height}"
                raise NervesegError(f"{where}: the model's {what} has shape {shape}, its "
                                    f"sidecar says {said}")

    @property
    def where(self) -> str:
        return self.session.get_providers()[0]

    def run_batch(self, images: Sequence[np.ndarray], variants: Sequence[Variant]
                  ) -> tuple[list[np.ndarray], np.ndarray | None]:
        info, geometry = self.info, self.info.geometry
        batch = np.stack([geometry.forward(image) for image in images])
        x = normalise_array(batch, info.mean, info.std, info.in_channels)
        probs, presences = [], []
        for variant in variants:
            outputs = self.session.run(self.outputs,
                                       {INPUT: np.ascontiguousarray(flip_array(x, variant))})
            probs.append(flip_array(mask_probabilities(outputs[0], info.softmax), variant))
            if len(outputs) > 1:
                presences.append(sigmoid(outputs[1]))
        stacked = np.concatenate(probs, axis=1)  # (N, V * K, H', W'): classes within variants
        stacks = [geometry.backward_array(stacked[i], *image.shape)
                  for i, image in enumerate(images)]
        presence = np.stack(presences, 1) if presences else None
        return self._split(stacks, len(variants)), presence


# --------------------------------------------------------------------------------------------
# choosing and loading


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise NervesegError(f"--engine {name!r}: use {' or '.join(ENGINES)}")
    return name


def load_engines(runs: Sequence[str | Path], engine: str, device: str = "auto",
                 amp: str = "auto", channels_last: bool = False) -> list[Engine]:
    """One engine per run folder or exported model; they must agree on input channels."""
    if not runs:
        raise NervesegError("predict needs at least one run folder")
    check_engine(engine)
    loaded: list[Engine]
    if engine == "torch":
        exported = [r for r in runs if is_exported(r)]
        if exported:
            raise NervesegError(f"{exported[0]}: an exported model runs with --engine "
                                "onnxruntime; --engine torch needs its run folder")
        from nerveseg_cli.device import resolve_amp, resolve_device

        torch_device = resolve_device(device)
        dtype = resolve_amp(amp, torch_device)
        loaded = [TorchEngine.load(run, torch_device, dtype, channels_last) for run in runs]
    else:
        if amp not in ("auto", "off"):
            raise NervesegError(f"--amp {amp} applies to --engine torch; ONNX Runtime runs the "
                                "exported float32 model")
        if channels_last:
            raise NervesegError("--channels-last applies to --engine torch")
        ort_providers(device)  # a bad --device before any export
        loaded = [OnnxEngine.load(run, device) if is_exported(run) else
                  OnnxEngine.export(run, device) for run in runs]
    channels = {e.info.in_channels for e in loaded}
    if len(channels) > 1:
        raise NervesegError("the runs disagree on input channels ("
                            + ", ".join(f"{e.path}: {e.info.in_channels}" for e in loaded)
                            + ")")
    return loaded

"""Inference engines: what turns a batch of decoded images into probability maps, one model each.

:class:`~nerveseg_cli.inference.predict.Predictor` merges TTA variants and models, gates by presence
and writes; for each model it calls an :class:`Engine`, which brings the images to the model's
geometry, normalises them, runs every TTA variant (each flip inverted), turns the logits into
probabilities and maps them back to each image's size:

- :class:`TorchEngine` (``--engine torch``, the default): a run folder's network in PyTorch, on
  the CPU or a GPU, with autocast and channels-last as ``predict`` always did;
- :class:`OnnxEngine` (``--engine onnxruntime``): an exported model (``nerveseg export``) in an
  ONNX Runtime session, CPU or CUDA provider, with the pre- and post-processing in numpy and
  OpenCV. A run folder given to it is exported on the fly, in memory. Its path from an
  ``.onnx`` file to the maps never imports torch.

What the predictor needs to know about a model (:func:`read_model_info`) is a
:class:`~nerveseg_cli.inference.model_info.ModelInfo`, from a run's config.json or an exported
model's sidecar alike; ONNX Runtime's session comes from :mod:`nerveseg_cli.inference.ort`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerveseg_cli.errors import NervesegError, brief
from nerveseg_cli.geometry import normalise_array
from nerveseg_cli.inference.exported import INPUT, MASK, PRESENCE, is_exported
from nerveseg_cli.inference.model_info import ModelInfo, mask_probabilities, sigmoid
from nerveseg_cli.inference.ort import ort_providers, ort_session

if TYPE_CHECKING:
    import torch


ENGINES = ("torch", "onnxruntime")
Variant = tuple[bool, bool]  # (flip height, flip width)


def read_model_info(path: str | Path) -> ModelInfo:
    """The info of a run folder (config.json) or an exported model (its sidecar), without
    loading the network."""
    path = Path(path)
    if is_exported(path):
        from nerveseg_cli.inference.exported import read_sidecar

        return read_sidecar(path).model_info(path)
    from nerveseg_cli.io.runs import read_config

    config = read_config(path)
    return ModelInfo.from_run(path, config, config.model.presence_head)


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

        from nerveseg_cli.io.runs import load_run

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


class OnnxEngine(Engine):
    """An exported model in ONNX Runtime; numpy and OpenCV around it, no torch."""

    name = "onnxruntime"

    def __init__(self, info: ModelInfo, session: Any, presence: bool) -> None:
        self.info, self.session = info, session
        self.outputs = [MASK, PRESENCE] if presence else [MASK]

    @classmethod
    def load(cls, path: str | Path, device: str) -> OnnxEngine:
        """An exported model, its sidecar checked against it."""
        from nerveseg_cli.inference.exported import load_exported

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
        from nerveseg_cli.inference.export import export_bytes

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

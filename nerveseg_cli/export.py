"""``nerveseg export``: a run folder -> an ONNX model and its JSON sidecar (docs/formats.md,
"Exported models"; docs/export.md).

The network goes through torch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``: the dynamo exporter needs onnxscript, which nerveseg does not depend on), with
a dynamic batch and, where the architecture allows, a dynamic height and width
(:mod:`nerveseg_cli.models.exportable` replaces the modules the exporter cannot translate for any
size). ``MODEL.onnx.json`` beside it holds everything a program needs to use it: the geometry,
the normalisation, the classes, the output names and layout, the prediction defaults, the opset,
and the SHA-256 of the ``.onnx`` file, so that a sidecar that does not belong to its model is
refused.

Before anything is written, ONNX Runtime runs the exported model on a few random inputs and its
outputs (logits) must equal torch's within :data:`TOLERANCE` of their scale (the largest
logit; logits are unbounded, and a random-init ResNet's reach 80), else the export is refused,
saying by how much they differ. The sidecar records the differences, in probability too.

This module does not import torch at load time: reading a sidecar (:func:`load_exported`) is
part of ``predict --engine onnxruntime``'s torch-free path.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerveseg_cli import __version__
from nerveseg_cli.classes import Classes
from nerveseg_cli.crosscheck import ModelFacts, check_training_record, disagree
from nerveseg_cli.errors import NervesegError, brief, require_file
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.postprocess import PostProcess
from nerveseg_cli.records import json_text, read_json_object

if TYPE_CHECKING:
    from nerveseg_cli.engines import ModelInfo
    from nerveseg_cli.runs import RunConfig

FORMAT = "nerveseg-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
OPSETS = range(13, 21)  # what the TorchScript-based exporter writes and ONNX Runtime reads
TOLERANCE = 1e-4  # largest difference of ONNX Runtime's logits from torch's, of their scale
INPUT, MASK, PRESENCE = "image", "mask_logits", "presence_logits"
SIDECAR_SUFFIX = ".json"


def sidecar_path(model: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    model = Path(model)
    return model.with_name(model.name + SIDECAR_SUFFIX)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# the sidecar


@dataclass
class Sidecar:
    """``MODEL.onnx.json``: the exported model's preprocessing, outputs and provenance."""

    sha256: str  # of the .onnx file
    opset: int
    model: dict[str, Any]  # config.json's model (architecture, encoder, heads)
    geometry: Geometry
    mean: float
    std: float
    in_channels: int
    mask_channels: int
    presence_channels: int | None  # None: no presence head
    classes: Classes | None
    multilabel: bool
    dynamic_size: bool  # the height and width may differ from the geometry's
    size_multiple: int
    inference: dict[str, Any] = field(default_factory=dict)  # the recipe's predict defaults
    threshold: float = 0.5
    min_area: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the run folder and its files' hashes
    check: dict[str, Any] = field(default_factory=dict)  # the export-time comparison
    nerveseg_version: str = __version__

    @property
    def softmax(self) -> bool:
        """Mask probabilities are a softmax over the channels (several exclusive classes)."""
        return self.classes is not None and not self.multilabel

    def to_dict(self) -> dict[str, Any]:
        height = self.geometry.height if not self.dynamic_size else "height"
        width = self.geometry.width if not self.dynamic_size else "width"
        mask = {"name": MASK, "shape": ["batch", self.mask_channels, height, width],
                "activation": "softmax over channels, background first" if self.softmax
                else "sigmoid per channel"}
        presence = None if self.presence_channels is None else {
            "name": PRESENCE, "activation": "sigmoid",
            "shape": ["batch"] if self.presence_channels == 1 else
            ["batch", self.presence_channels]}
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "nerveseg_version": self.nerveseg_version,
            "sha256": self.sha256, "opset": self.opset,
            "input": {"name": INPUT, "dtype": "float32",
                      "shape": ["batch", self.in_channels, height, width],
                      "dynamic_size": self.dynamic_size, "size_multiple": self.size_multiple,
                      "value": "(pixel / 255 - mean) / std of the grey image, repeated over "
                               "the channels"},
            "outputs": {"mask_logits": mask, "presence_logits": presence},
            "geometry": self.geometry.to_dict(),
            "normalization": {"mean": self.mean, "std": self.std},
            "classes": list(self.classes.names) if self.classes is not None else None,
            "multilabel": self.multilabel,
            "postprocess": {"threshold": self.threshold, "min_area": self.min_area},
            "inference": self.inference,
            "model": self.model,
            "training": self.training,
            "source": self.source,
            "check": self.check,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> Sidecar:
        """Parse and check a sidecar (it may come from anywhere: every value is checked)."""
        if data.get("format") != FORMAT:
            raise NervesegError(f"{where}: not a nerveseg ONNX sidecar (no \"format\": "
                                f"\"{FORMAT}\")")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or \
                not 1 <= version <= FORMAT_VERSION:
            raise NervesegError(f"{where}: sidecar format_version {version!r}; this nerveseg "
                                f"reads 1 to {FORMAT_VERSION} (a newer nerveseg wrote it?)")
        try:
            inputs, outputs = data["input"], data["outputs"]
            mask, presence = outputs["mask_logits"], outputs.get("presence_logits")
            sidecar = cls(
                sha256=_text(data["sha256"], "sha256"), opset=_whole(data["opset"], "opset"),
                model=dict(data.get("model") or {}),
                geometry=Geometry.from_dict(data["geometry"]),
                mean=float(data["normalization"]["mean"]),
                std=float(data["normalization"]["std"]),
                in_channels=_whole(inputs["shape"][1], "input channels"),
                mask_channels=_whole(mask["shape"][1], "mask_logits channels"),
                presence_channels=None if presence is None else
                (1 if len(presence["shape"]) == 1 else
                 _whole(presence["shape"][1], "presence_logits channels")),
                classes=None if data.get("classes") is None else
                Classes.from_json(data, str(where)),
                multilabel=_flag(data.get("multilabel", False), "multilabel"),
                dynamic_size=_flag(inputs["dynamic_size"], "input dynamic_size"),
                size_multiple=_whole(inputs.get("size_multiple", 1), "size_multiple"),
                inference=dict(data.get("inference") or {}),
                threshold=float(data["postprocess"]["threshold"]),
                min_area=_whole(data["postprocess"]["min_area"], "min_area", low=0),
                training=dict(data.get("training") or {}),
                source=dict(data.get("source") or {}), check=dict(data.get("check") or {}),
                nerveseg_version=str(data.get("nerveseg_version", "?")))
            if inputs.get("name") != INPUT or mask.get("name") != MASK or \
                    (presence is not None and presence.get("name") != PRESENCE):
                raise ValueError(f"the input must be named {INPUT!r} and the outputs "
                                 f"{MASK!r} and {PRESENCE!r}")
        except NervesegError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else brief(exc)
            raise NervesegError(f"{where}: not a valid nerveseg ONNX sidecar ({detail})") \
                from None
        sidecar._validate(where)
        sidecar._check_records(data, str(where))
        return sidecar

    def _validate(self, where: Path) -> None:
        problem = None
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            problem = f"sha256 {self.sha256!r} is not 64 hexadecimal digits"
        elif not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            problem = f"normalization mean {self.mean}, std {self.std}: the std must be positive"
        elif not 0 <= self.threshold <= 1:
            problem = f"threshold {self.threshold} is not in [0, 1]"
        elif self.classes is not None and self.presence_channels not in (None, *range(
                1, self.classes.count)):
            problem = f"{self.presence_channels} presence outputs for {self.classes.count} classes"
        elif self.classes is not None and self.mask_channels != (
                self.classes.count - 1 if self.multilabel else self.classes.count):
            problem = (f"{self.mask_channels} mask channels for {self.classes.count} "
                       f"{'multilabel ' if self.multilabel else ''}classes")
        elif self.classes is None and self.mask_channels != 1:
            problem = f"{self.mask_channels} mask channels for a binary model (no classes)"
        if problem:
            raise NervesegError(f"{where}: not a valid nerveseg ONNX sidecar ({problem})")

    def _check_records(self, data: dict[str, Any], where: str) -> None:
        """What the sidecar says twice must agree (nerveseg_cli/crosscheck.py): the input and
        output shapes with the geometry, the export check's inputs with the geometry, the
        ``model`` record and the ``training`` record with the rest, the postprocess with the
        inference defaults it was made from."""
        self._check_shapes(data, where)
        self._check_model_record(where)
        check_training_record(self.training, self.facts, where)
        post = PostProcess()
        made = (_default(self.inference.get("threshold"), post.threshold),
                _default(self.inference.get("min_area"), post.min_area))
        if made != (self.threshold, self.min_area):
            raise disagree(where, "postprocess threshold, min_area",
                           f"{self.threshold}, {self.min_area}", "its inference record",
                           f"{made[0]}, {made[1]}")

    @property
    def facts(self) -> ModelFacts:
        return ModelFacts(str(self.model.get("arch", self.training.get("arch"))),
                          self.geometry, self.in_channels, self.classes, self.multilabel,
                          self.presence_channels is not None)

    def _check_shapes(self, data: dict[str, Any], where: str) -> None:
        """A graph fixed to one size is fixed to the geometry's; the export check ran at it."""
        size = [self.geometry.height, self.geometry.width]
        for what, shape in (("input", data["input"]["shape"]),
                            ("mask_logits", data["outputs"]["mask_logits"]["shape"])):
            spatial = list(shape[2:])
            fixed = all(isinstance(side, int) for side in spatial)
            if len(spatial) != 2 or (fixed if self.dynamic_size else spatial != size):
                raise disagree(where, f"{what} shape", shape, "its geometry and dynamic_size",
                               f"{_size_text(size)} fixed" if not self.dynamic_size else
                               "any height and width")
        checked = self.check.get("inputs")
        if checked is None:
            return
        if not isinstance(checked, list) or not checked or not all(
                isinstance(s, list) and len(s) == 4 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in s)
                for s in checked):
            raise NervesegError(f"{where}: not a valid nerveseg ONNX sidecar (check inputs "
                                f"{str(checked)[:60]} are not shapes)")
        if list(checked[0][2:]) != size:
            raise disagree(where, "geometry", _size_text(size), "its export check "
                           "(check.inputs, at the geometry)", _size_text(checked[0][2:]))
        channels = {s[1] for s in checked}
        if channels != {self.in_channels}:
            raise disagree(where, "input channels", self.in_channels, "its export check "
                           "(check.inputs)", ", ".join(map(str, sorted(channels))))

    def _check_model_record(self, where: str) -> None:
        """The ``model`` record (config.json's) against the input, outputs and classes."""
        model, record = self.model, "its model record"
        count = self.classes.count if self.classes is not None else 2
        for what, ours, theirs in (
                ("input channels", self.in_channels, model.get("in_channels", 1)),
                ("classes", count, model.get("classes", 2)),
                ("multilabel", self.multilabel, model.get("multilabel", False)),
                ("presence output", self.presence_channels is not None,
                 model.get("presence_head", False))):
            if ours != theirs:
                raise disagree(where, what, ours, record, theirs)

    def model_info(self, path: Path) -> ModelInfo:
        from nerveseg_cli.engines import ModelInfo

        return ModelInfo(path, self.geometry, self.mean, self.std, self.in_channels,
                         self.classes, self.multilabel, self.presence_channels is not None,
                         self.inference, self.training)


def _whole(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} {value!r} is not a whole number >= {low}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} {value!r} is not true or false")
    return value


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _size_text(size: list[int]) -> str:
    """(height, width) as WxH."""
    return f"{size[1]}x{size[0]}" if len(size) == 2 else str(size)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r} is not a string")
    return value


def read_sidecar(model: str | Path) -> Sidecar:
    """The sidecar of an exported model, checked (not yet against the model's bytes)."""
    model = Path(model)
    path = sidecar_path(model)
    if model.is_dir():
        require_file(model, "an exported model (an .onnx file written by nerveseg export)")
    if not model.is_file():
        raise NervesegError(f"{model}: no such exported model (an .onnx file written by "
                            "nerveseg export)")
    data = read_json_object(path)
    if data is None:
        raise NervesegError(f"{model}: its sidecar {path.name} is missing (nerveseg export "
                            "writes both; the model alone does not say how to use it)")
    return Sidecar.from_dict(data, path)


def load_exported(model: str | Path) -> tuple[Sidecar, bytes]:
    """An exported model's sidecar and bytes, after checking that the sidecar is its own."""
    sidecar = read_sidecar(model)
    try:
        data = Path(model).read_bytes()
    except OSError as exc:
        raise NervesegError(f"{model}: cannot read ({exc.strerror or brief(exc)})") from None
    digest = file_sha256(data)
    if digest != sidecar.sha256:
        raise NervesegError(f"{sidecar_path(model)}: records SHA-256 {sidecar.sha256[:12]}... "
                            f"but {Path(model).name} has {digest[:12]}...: the sidecar belongs "
                            "to another export (export the run again)")
    return sidecar, data


def is_exported(path: str | Path) -> bool:
    """A path names an exported model (an ``.onnx`` file) rather than a run folder."""
    # by the name alone: another file given as a run is "not a run folder", as it always was
    return Path(path).suffix.lower() == ".onnx"


# --------------------------------------------------------------------------------------------
# exporting


@dataclass
class ExportResult:
    out: Path
    sidecar: Path
    record: Sidecar
    replaced: list[str]  # modules replaced for the exporter (models/exportable.py)
    seconds: float

    @property
    def summary(self) -> dict[str, Any]:
        check = self.record.check
        return {"out": str(self.out), "sidecar": str(self.sidecar),
                "arch": self.record.model.get("arch"), "opset": self.record.opset,
                "dynamic_size": self.record.dynamic_size,
                "max_abs_diff_logits": check.get("max_abs_diff_logits"),
                "relative_diff": check.get("relative_diff"),
                "max_abs_diff_probability": check.get("max_abs_diff_probability"),
                "seconds": round(self.seconds, 2)}


def export_run(run: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
               overwrite: bool = False, tolerance: float = TOLERANCE) -> ExportResult:
    """Export a run folder's best weights to ``out`` (an ``.onnx`` file) and its sidecar."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise NervesegError(f"{out}: name the exported model NAME.onnx")
    _check_settings(opset, tolerance)  # before the output's folders are made
    started = time.perf_counter()
    run = Path(run)
    side = sidecar_path(out)
    from nerveseg_cli.io.outputs import Outputs, atomic_write_bytes, atomic_write_text

    with Outputs([run]) as outputs:
        model_file = outputs.file(out, overwrite=overwrite)
        sidecar_file = outputs.file(side, overwrite=overwrite)
        data, record, replaced = export_bytes(run, opset=opset, tolerance=tolerance)
        record.source["file"] = out.name
        atomic_write_bytes(model_file, data)
        atomic_write_text(sidecar_file, json_text(record.to_dict()))
    return ExportResult(out, side, record, replaced, time.perf_counter() - started)


def export_bytes(run: str | Path, *, opset: int = DEFAULT_OPSET,
                 tolerance: float = TOLERANCE) -> tuple[bytes, Sidecar, list[str]]:
    """A run folder exported in memory (``predict --engine onnxruntime`` on a run folder):
    the ``.onnx`` bytes, the sidecar, and the modules replaced for the exporter."""
    from nerveseg_cli.runs import BEST, CONFIG, load_run

    run = Path(run)
    config, model = load_run(run)
    source = {"run": str(run.absolute()),
              "config_sha256": file_sha256((run / CONFIG).read_bytes()),
              "weights": BEST, "weights_sha256": file_sha256((run / BEST).read_bytes())}
    return export_model(model, config, opset=opset, tolerance=tolerance, source=source,
                        where=str(run))


def _check_settings(opset: int, tolerance: float) -> None:
    if opset not in OPSETS:
        raise NervesegError(f"--opset {opset}: use {OPSETS.start} to {OPSETS.stop - 1}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise NervesegError(f"tolerance {tolerance}: must be a number >= 0")


def export_model(model: Any, config: RunConfig, *, opset: int = DEFAULT_OPSET,
                 tolerance: float = TOLERANCE, source: dict[str, Any] | None = None,
                 where: str = "model") -> tuple[bytes, Sidecar, list[str]]:
    """Export a loaded network (eval mode, on the CPU) with its run config (module
    docstring): for inputs of any size where the architecture allows, else of the geometry's.
    Refused when ONNX Runtime's logits differ from torch's by more than ``tolerance`` of their
    scale (:class:`Difference`)."""
    import torch

    from nerveseg_cli.engines import import_onnxruntime  # not at the top: engines imports us
    from nerveseg_cli.models.exportable import exportable

    _check_settings(opset, tolerance)
    onnxruntime = import_onnxruntime()  # missing: refused before the export, which takes a while
    arch = config.model.arch
    model = model.cpu().eval()
    graph, replaced = exportable(model)
    softmax = config.classes is not None and not config.model.multilabel
    multiple = int(getattr(model, "size_multiple", 1))
    geometry = config.geometry
    checks = [_random_input(config, 2, geometry.height, geometry.width, seed=0),
              _random_input(config, 1, geometry.height + multiple, geometry.width + multiple,
                            seed=1)]
    with torch.no_grad():
        try:
            expected = [_torch_outputs(model, checks[0])]
        except Exception as exc:  # noqa: BLE001  e.g. a geometry too small for the network
            raise NervesegError(f"{where}: --arch {arch} does not run at its geometry "
                                f"{geometry.width}x{geometry.height} in torch ({brief(exc)}); "
                                "not exported") from None
        try:  # the other size tells whether a graph for any size is right
            expected.append(_torch_outputs(model, checks[1]))
        except Exception:  # noqa: BLE001  the network only runs at its own size (a ViT)
            pass
    failures: list[str] = []
    for dynamic in (True, False)[2 - len(expected):]:
        inputs = checks[:len(expected) if dynamic else 1]
        try:
            data = _export(graph, checks[0], opset, dynamic, model.has_presence)
        except Exception as exc:  # noqa: BLE001  the exporter raises many types
            failures.append(f"{type(exc).__name__}: {brief(exc, 160)}")
            continue
        session = _session(data, arch, where)
        differences = [Difference.of(session, x, reference, softmax)
                       for x, reference in zip(inputs, expected, strict=False)]
        if any(d is None for d in differences):
            failures.append(f"ONNX Runtime cannot run it at {_size(inputs, differences)}")
            continue
        worst = max(differences, key=lambda d: d.relative)
        if worst.relative <= tolerance:
            break
        failures.append(f"it differs from torch by {worst.logits:.3g} in the logits, "
                        f"{worst.relative:.3g} of their scale {worst.scale:.3g} (tolerance "
                        f"{tolerance:g}; {worst.probability:.3g} in probability)")
    else:
        raise NervesegError(f"{where}: --arch {arch} cannot be exported to ONNX "
                            f"({failures[-1]}); not exported")
    import onnx

    from nerveseg_cli.postprocess import resolve_postprocess

    opset_used = max((o.version for o in onnx.load_from_string(data).opset_import
                      if o.domain in ("", "ai.onnx")), default=opset)
    post = resolve_postprocess(config.inference.get("threshold"),
                               config.inference.get("min_area"), None)
    record = Sidecar(
        sha256=file_sha256(data), opset=opset_used, model=config.model.to_dict(),
        geometry=geometry, mean=config.mean, std=config.std,
        in_channels=config.model.in_channels, mask_channels=config.model.mask_channels,
        presence_channels=config.model.presence_channels if model.has_presence else None,
        classes=_classes(config), multilabel=config.model.multilabel, dynamic_size=dynamic,
        size_multiple=multiple, inference=dict(config.inference),
        threshold=post.threshold, min_area=post.min_area, training=dict(config.training),
        source=dict(source or {}),
        check={"inputs": [list(x.shape) for x in inputs], "tolerance": tolerance,
               "max_abs_diff_logits": max(d.logits for d in differences),
               "logit_scale": max(d.scale for d in differences),
               "relative_diff": worst.relative,
               "max_abs_diff_probability": max(d.probability for d in differences),
               "torch": torch.__version__, "onnxruntime": onnxruntime.__version__})
    Sidecar.from_dict(record.to_dict(), Path(where))  # never write one a reader refuses
    return data, record, replaced


def _classes(config: RunConfig) -> Classes | None:
    """The run's class names; a config of several classes without them (written by hand)
    gets the names ``--classes N`` gives (a sidecar always names the classes it has)."""
    if config.classes is None and config.model.classes > 2:
        return Classes.parse(str(config.model.classes))
    return config.classes


def _size(inputs: list[np.ndarray], differences: list[Difference | None]) -> str:
    x = next(x for x, d in zip(inputs, differences, strict=True) if d is None)
    return f"{x.shape[-1]}x{x.shape[-2]}"


def _random_input(config: RunConfig, batch: int, height: int, width: int,
                  seed: int) -> np.ndarray:
    """Random grey images of the given size, normalised as predict normalises images."""
    from nerveseg_cli.geometry import normalise_array

    images = np.random.default_rng(seed).integers(0, 256, (batch, height, width), np.uint8)
    return normalise_array(images, config.mean, config.std, config.model.in_channels)


def _torch_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    import torch

    mask, presence = model(torch.from_numpy(x))
    return [mask.numpy()] + ([] if presence is None else [presence.numpy()])


@dataclass(frozen=True)
class Difference:
    """How far ONNX Runtime's outputs are from torch's on one input: the largest absolute
    difference of the logits, that relative to their scale (the largest absolute torch logit,
    at least 1), and of the probabilities predict makes of them."""

    logits: float
    scale: float
    probability: float

    @property
    def relative(self) -> float:
        return self.logits / self.scale

    @classmethod
    def of(cls, session: Any, x: np.ndarray, expected: list[np.ndarray], softmax: bool
           ) -> Difference | None:
        """None when ONNX Runtime cannot run the input, or gives other shapes."""
        from nerveseg_cli.engines import mask_probabilities, sigmoid

        try:
            outputs = session.run(None, {INPUT: x})
        except Exception:  # noqa: BLE001  e.g. a reshape fixed to the export size
            return None
        if [o.shape for o in outputs] != [e.shape for e in expected]:
            return None
        logits = max(float(np.abs(o - e).max(initial=0.0))
                     for o, e in zip(outputs, expected, strict=True))
        scale = max(1.0, *(float(np.abs(e).max(initial=0.0)) for e in expected))
        probability = float(np.abs(mask_probabilities(outputs[0], softmax)
                                   - mask_probabilities(expected[0], softmax)).max(initial=0.0))
        if len(outputs) > 1:
            probability = max(probability, float(np.abs(sigmoid(outputs[1])
                                                        - sigmoid(expected[1])).max()))
        return cls(logits, scale, probability)


def _export(graph: Any, example: np.ndarray, opset: int, dynamic: bool,
            presence: bool) -> bytes:
    import io

    import torch

    names = [MASK, PRESENCE] if presence else [MASK]
    spatial = {2: "height", 3: "width"} if dynamic else {}
    axes = {INPUT: {0: "batch", **spatial}, MASK: {0: "batch", **spatial}}
    if presence:
        axes[PRESENCE] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_stderr():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the check decides
        torch.onnx.export(graph, (torch.from_numpy(example),), buffer, dynamo=False,
                          opset_version=opset, input_names=[INPUT], output_names=names,
                          dynamic_axes=axes, do_constant_folding=True)
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: on a failure the exporter's C++ logger prints the whole
    traced graph there (thousands of lines), which the one-line error replaces."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _session(data: bytes, arch: str, where: str) -> Any:
    from nerveseg_cli.engines import ort_session

    try:
        return ort_session(data, "cpu")
    except NervesegError:
        raise
    except Exception as exc:  # noqa: BLE001  ONNX Runtime's errors come in many types
        raise NervesegError(f"{where}: ONNX Runtime cannot load the exported {arch} "
                            f"({brief(exc)})") from None

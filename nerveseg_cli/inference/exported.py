"""Exported models (docs/formats.md, "Exported models"): ``MODEL.onnx`` and its JSON sidecar
``MODEL.onnx.json``, read and checked here (:func:`load_exported`: the sidecar's every value,
what it says twice, and the SHA-256 of the model it belongs to). :mod:`.export` writes them;
``predict --engine onnxruntime`` and ``bench`` read them. No torch here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerveseg_cli import __version__
from nerveseg_cli.classes import Classes
from nerveseg_cli.crosscheck import ModelFacts, check_training_record, disagree
from nerveseg_cli.errors import NervesegError, brief, require_file
from nerveseg_cli.evaluation.postprocess import PostProcess
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.inference.model_info import ModelInfo
from nerveseg_cli.records import read_json_object

FORMAT = "nerveseg-onnx"
FORMAT_VERSION = 1
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

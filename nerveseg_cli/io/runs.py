"""Run folders: what ``train`` writes and ``predict`` reads (docs/formats.md).

A run folder is safe to load from an untrusted source: configuration is JSON, weights are
safetensors, and the resumable state is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nerveseg_cli import __version__
from nerveseg_cli.classes import Classes
from nerveseg_cli.crosscheck import ModelFacts, check_training_record
from nerveseg_cli.errors import NervesegError, brief
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.io.outputs import atomic_write_bytes, atomic_write_text
from nerveseg_cli.models import ModelConfig, SegmentationNet, build_model

CONFIG = "config.json"
BEST = "model.safetensors"
LAST = "last.safetensors"
STATE = "state.pt"
METRICS = "metrics.csv"
LOG = "train.log"
PLOT = "metrics.png"
# What train writes into a run folder: a new run over an old one (--overwrite, --continue
# starting over) removes them first, so no file of the old run outlives it (a train.log of two
# runs, or an old state.pt that a later resume would pair with the new config).
RUN_FILES = (CONFIG, BEST, LAST, STATE, METRICS, LOG, PLOT)


@dataclass
class RunConfig:
    """config.json: the model, its preprocessing, and the training options used."""

    model: ModelConfig
    geometry: Geometry
    mean: float
    std: float
    training: dict[str, Any]
    # prediction defaults from the training recipe (tta, tta_merge, min_area, crf, ...)
    inference: dict[str, Any] = field(default_factory=dict)
    classes: Classes | None = None  # a multi-class task's classes (None: binary)

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "nerveseg_version": __version__,
            "model": self.model.to_dict(),
            "geometry": self.geometry.to_dict(),
            "normalization": {"mean": self.mean, "std": self.std},
            "training": self.training,
            "inference": self.inference,
        }
        if self.classes is not None:
            record["classes"] = list(self.classes.names)
        return json.dumps(record, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> RunConfig:
        """Parse and check config.json (it may come from anywhere: every value is checked)."""
        try:
            data = json.loads(text)
            config = cls(ModelConfig.from_dict(data["model"]),
                         Geometry.from_dict(data["geometry"]),
                         float(data["normalization"]["mean"]),
                         float(data["normalization"]["std"]),
                         dict(data.get("training", {})),
                         dict(data.get("inference") or {}),
                         _classes(data, source))
            if not (math.isfinite(config.mean) and math.isfinite(config.std)
                    and config.std > 0):
                raise ValueError(f"normalization mean {config.mean}, std {config.std}: the std "
                                 "must be a positive number")
            _check_model(config.model)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else brief(exc)
            raise NervesegError(f"{source}: not a nerveseg run config ({detail})") from None
        check_training_record(config.training, config.facts, str(source))
        return config

    @property
    def facts(self) -> ModelFacts:
        """What the config says of its model, to check against its training record (a config
        of several classes written by hand without names: the names ``--classes N`` gives)."""
        model = self.model
        classes = self.classes if self.classes is not None or model.classes <= 2 else \
            Classes.parse(str(model.classes))
        return ModelFacts(model.arch, self.geometry, model.in_channels, classes,
                          model.multilabel, model.presence_head)


def _classes(data: dict[str, Any], source: Path) -> Classes | None:
    """config.json's class list (multi-class runs), which must match the model's output."""
    if "classes" not in data:
        return None
    classes = Classes.from_json(data, str(source))
    if classes.count != ModelConfig.from_dict(data["model"]).classes:
        raise ValueError(f"{classes.count} class names for a model of "
                         f"{data['model'].get('classes')} classes")
    return classes


def _check_model(model: ModelConfig) -> None:
    """Values config.json may not hold (the network would not build, or build wrongly)."""
    for name in ("in_channels", "classes"):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise ValueError(f"model {name} {value!r} is not a whole number from 1 to 255")
    if model.classes < 2:
        raise ValueError(f"model classes {model.classes}: background and at least one class")
    if not isinstance(model.arch, str) or not isinstance(model.encoder, str):
        raise ValueError("model arch and encoder must be names")


def read_config(run: str | Path) -> RunConfig:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise NervesegError(f"{run}: not a run folder ({CONFIG} missing)")
    return RunConfig.from_json(path.read_text(encoding="utf-8"), path)


def write_config(run: Path, config: RunConfig) -> None:
    atomic_write_text(run / CONFIG, config.to_json())


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's weights as a safetensors file's bytes."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    return save(state)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    atomic_write_bytes(path, weights_bytes(model))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise NervesegError(f"{path}: weights file missing")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001  a damaged file is bad input
        raise NervesegError(f"{path}: unreadable weights ({brief(exc)})") from None
    try:
        result = unwrap(model).load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a parameter of another shape than the config builds
        raise NervesegError(f"{path}: weights do not fit the config "
                            f"({_shape_problem(exc)})") from None
    if result.missing_keys or result.unexpected_keys:
        raise NervesegError(
            f"{path}: weights do not fit the config ({len(result.missing_keys)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys; first: "
            f"{(result.missing_keys + result.unexpected_keys)[0]})")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _shape_problem(exc: RuntimeError) -> str:
    """The first parameter whose shape differs, from torch's load_state_dict message."""
    for line in str(exc).splitlines():
        if "size mismatch" in line:
            return line.strip().rstrip(".")
    return brief(exc)


def load_run(run: str | Path, weights: str = BEST) -> tuple[RunConfig, SegmentationNet]:
    """Rebuild a trained network from a run folder (no download: encoder weights come from
    the run's own file)."""
    run = Path(run)
    config = read_config(run)
    model_config = ModelConfig.from_dict({**config.model.to_dict(), "encoder_weights": "none"})
    try:
        model = build_model(model_config)
    except NervesegError as exc:  # the config names what cannot be built
        raise NervesegError(f"{run / CONFIG}: {exc}") from None
    load_weights(model, run / weights)
    model.eval()
    return config, model


def clear_run_files(run: Path) -> None:
    """Remove the files a run writes (:data:`RUN_FILES`) from ``run``, nothing else."""
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)

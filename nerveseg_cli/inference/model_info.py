"""What the predictor needs to know about a model, from a run's config.json or an exported
model's sidecar alike (:class:`ModelInfo`), and what its mask logits mean
(:func:`mask_probabilities`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.geometry import Geometry

if TYPE_CHECKING:
    from nerveseg_cli.io.runs import RunConfig


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

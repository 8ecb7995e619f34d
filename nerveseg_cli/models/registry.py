"""The model registry: architectures by name, each with its builder ``(ModelConfig) ->
SegmentationNet`` and an :class:`ArchSpec` saying which options it takes. Every network is a
:class:`SegmentationNet`: ``forward(x)`` gives ``(mask_logits, presence_logits or None)``.
The architectures register themselves through :func:`register` (:mod:`nerveseg_cli.models`
imports them when first needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nerveseg_cli.records import DictRecord


@dataclass
class ModelConfig(DictRecord):
    """Everything needed to rebuild a network (stored in a run's config.json)."""

    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str = "none"  # none | imagenet | PATH (only used when building to train)
    in_channels: int = 1
    decoder_attention: str | None = None  # scse
    presence_head: bool = False
    extra: dict[str, Any] | None = None  # options of custom architectures
    classes: int = 2  # background included; 2 is the binary task (one sigmoid logit)
    multilabel: bool = False  # with more classes: one sigmoid per class, not a softmax

    def to_dict(self) -> dict[str, Any]:
        """The fields, but the class ones of a binary model (its config.json stays as it
        always was)."""
        data = super().to_dict()
        if self.classes == 2 and not self.multilabel:
            del data["classes"], data["multilabel"]
        return data

    @property
    def mask_channels(self) -> int:
        """Logit maps: 1 (binary), C (softmax over the classes), C - 1 (sigmoid per class)."""
        if self.classes <= 2:
            return 1
        return self.classes - 1 if self.multilabel else self.classes

    @property
    def presence_channels(self) -> int:
        """Presence logits: one per foreground class."""
        return max(1, self.classes - 1)


class SegmentationNet(nn.Module):
    """Wraps a network so that forward returns ``(mask_logits, presence_logits | None)``.

    ``size_multiple`` is the factor input height and width must be divisible by.
    """

    def __init__(self, net: nn.Module, size_multiple: int, has_presence: bool) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = size_multiple
        self.has_presence = has_presence

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(x)
        if isinstance(out, tuple):
            presence = out[1]
            # one class: (N,) as the binary task always had; several: (N, K)
            return out[0], presence.reshape(-1) if presence.shape[-1] == 1 else \
                presence.reshape(presence.shape[0], -1)
        return out, None


Builder = Callable[[ModelConfig], SegmentationNet]
_REGISTRY: dict[str, Builder] = {}

# ModelConfig.extra keys (the CLI flags --skip, --width, --batch-norm, --activation, --context,
# --fusion, --decoders); None or absent means "the architecture's own default".
EXTRA_OPTIONS = ("skip", "width", "batch_norm", "activation", "context", "fusion", "decoders")
@dataclass(frozen=True)
class ArchSpec:
    """What an architecture accepts besides in_channels and the presence head."""

    options: frozenset[str]  # EXTRA_OPTIONS it takes
    encoder: bool  # takes --encoder (an smp / timm encoder)
    pretrained: bool  # takes --encoder-weights (its encoder or fixed backbone can be pretrained)
    decoder_attention: bool = False  # takes --decoder-attention scse


_SPECS: dict[str, ArchSpec] = {}


def register(name: str, *, options: Iterable[str] = (), encoder: bool = False,
             pretrained: bool = False, decoder_attention: bool = False
             ) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` with the options it accepts (see :class:`ArchSpec`)."""
    spec = ArchSpec(frozenset(options), encoder, pretrained, decoder_attention)
    unknown = spec.options - set(EXTRA_OPTIONS)
    if unknown:
        raise ValueError(f"{name}: unknown options {sorted(unknown)}")

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        _SPECS[name] = spec
        return builder

    return decorate


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def registered_specs() -> dict[str, ArchSpec]:
    """Every registered architecture's spec, by name (those registered so far)."""
    return dict(_SPECS)


def builder(name: str) -> Builder:
    return _REGISTRY[name]


def option_flag(key: str, value: Any) -> str:
    """How an extra option is spelled on the command line: ``--skip sharp``, ``--no-batch-norm``."""
    if key == "batch_norm":
        return "--batch-norm" if value else "--no-batch-norm"
    return f"--{key.replace('_', '-')} {value}"


def extra_option(config: ModelConfig, key: str, default: Any) -> Any:
    """An extra option of the config, or the architecture's default when unset."""
    value = (config.extra or {}).get(key)
    return default if value is None else value

"""Custom options on segmentation_models_pytorch networks, without touching smp's code.

- ``activation``: every ``nn.ReLU`` module of the decoder is replaced (seed 000's comparison).
- ``skip sharp`` (unet, unetplusplus): the encoder features the decoder uses as skips pass
  :class:`~nerveseg_cli.models.blocks.SharpenSkip` first (seed 003); the deepest map, which
  starts the decoder rather than joining it, is left alone, as in Sharp U-Net.
- ``context rpa`` (unet): the deepest encoder map passes seed 002's RPA module.
- ``fusion apf`` (unet): the outputs of the last three decoder blocks (read with forward hooks)
  are fused by seed 002's APF module, which feeds the segmentation head.
- ``decoders per-class`` (unet, several classes): one decoder and head per foreground class on
  the shared encoder, each at half the decoder channels but for the last stage's 16, so that
  two classes cost about one shared decoder. Under a softmax the background logit is a
  constant 0 (a softmax is the same for logits shifted together, so one of them can be
  fixed), each class's decoder giving its own logit against it.

:class:`UnetWithExtras` runs the smp model's own encoder, decoder and heads in that order and
changes only what flows between them.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.models.blocks import SharpenSkip, check_skip, replace_activations

CONTEXTS = ("none", "rpa")
FUSIONS = ("none", "apf")
DECODERS = ("shared", "per-class")
# smp Unet's default decoder channels halved, but for the full-resolution stage: two classes'
# decoders then cost about one shared decoder. With 8 channels there, a class's decoder could
# leave every channel off (ReLU) on that class's pixels from the first epoch and never learn
# it (2 of 9 usgra-seg runs); 16 keep the shared decoder's width where the logits are made.
PER_CLASS_DECODER_CHANNELS = (128, 64, 32, 16, 16)


def check_smp_extras(arch: str, extra: dict[str, Any]) -> None:
    """Validate the values of the custom options on an smp architecture."""
    check_skip(extra.get("skip"))
    if extra.get("context") not in (None, *CONTEXTS):
        raise NervesegError(f"--context {extra['context']!r}: use {' or '.join(CONTEXTS)}")
    if extra.get("fusion") not in (None, *FUSIONS):
        raise NervesegError(f"--fusion {extra['fusion']!r}: use {' or '.join(FUSIONS)}")
    if extra.get("decoders") not in (None, *DECODERS):
        raise NervesegError(f"--decoders {extra['decoders']!r}: use {' or '.join(DECODERS)}")
    if per_class_decoders(extra) and extra.get("fusion") == "apf":
        raise NervesegError("--decoders per-class and --fusion apf exclude each other (APF "
                            "fuses the levels of one decoder)")


def per_class_decoders(extra: dict[str, Any] | None) -> bool:
    return (extra or {}).get("decoders") == "per-class"


def _out_channels(module: nn.Module) -> int:
    """Output channels of a block: those of its last convolution."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NervesegError(f"cannot find the channels of {type(module).__name__}")
    return convs[-1].out_channels


class UnetWithExtras(nn.Module):
    """An smp model with sharp skips, RPA on the deepest features, APF in the decoder and/or a
    decoder per class: ``more_classes`` are the (decoder, head) pairs of the classes after the
    first, whose pair is the model's own."""

    def __init__(self, model: nn.Module, sharp: bool, context: bool, fusion: bool,
                 more_classes: list[tuple[nn.Module, nn.Module]] | None = None,
                 background_logit: bool = False) -> None:
        super().__init__()
        from nerveseg_cli.models.ragcm import (
            APF_LEVELS,
            AdaptivePyramidFusion,
            RegionPyramidAggregation,
        )

        self.model = model
        self.sharpen = SharpenSkip() if sharp else None
        self.context = RegionPyramidAggregation(model.encoder.out_channels[-1]) \
            if context else None
        self.fusion: nn.Module | None = None
        self._pyramid: list[torch.Tensor] = []
        if fusion:
            blocks = list(model.decoder.blocks)[-APF_LEVELS:]
            channels = [_out_channels(b) for b in blocks]
            self.fusion = AdaptivePyramidFusion(channels, channels[-1])
            for block in blocks:
                block.register_forward_hook(self._keep_output)
        self.class_decoders = nn.ModuleList(d for d, _ in more_classes or [])
        self.class_heads = nn.ModuleList(h for _, h in more_classes or [])
        self.background_logit = background_logit

    def _keep_output(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._pyramid.append(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = list(self.model.encoder(x))
        if self.sharpen is not None:
            # features[0] is the input itself (never a skip); features[-1] starts the decoder
            features[1:-1] = [self.sharpen(f) for f in features[1:-1]]
        if self.context is not None:
            features[-1] = self.context(features[-1])
        masks = self._decode(features)
        head = getattr(self.model, "classification_head", None)
        if head is not None:
            return masks, head(features[-1])
        return masks

    def _decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        self._pyramid = []
        decoded = self.model.decoder(features)
        if self.fusion is not None:
            decoded = self.fusion(self._pyramid)
            self._pyramid = []
        masks = self.model.segmentation_head(decoded)
        if not self.class_decoders:  # one decoder (a per-class model has two or more)
            return masks
        logits = [masks, *(head(decoder(features)) for decoder, head
                           in zip(self.class_decoders, self.class_heads, strict=True))]
        if self.background_logit:
            logits.insert(0, torch.zeros_like(masks))
        return torch.cat(logits, 1)


def extend_smp(model: nn.Module, extra: dict[str, Any],
               more_classes: list[nn.Module] | None = None, softmax: bool = False) -> nn.Module:
    """Apply the options of ``extra`` to a freshly built smp model (validated before).

    ``more_classes``: with ``decoders per-class``, models built as ``model`` (one logit each)
    lending their decoder and head to the second class onwards; their encoders are dropped.
    ``softmax``: the per-class logits get the constant background logit in front."""
    decoders = [model.decoder, *(m.decoder for m in more_classes or [])]
    activation = extra.get("activation")
    if activation is not None and min(replace_activations(d, activation)
                                      for d in decoders) == 0:
        raise NervesegError(f"--activation {activation}: the {type(model).__name__} decoder has "
                            "no ReLU modules to replace")
    sharp = extra.get("skip") == "sharp"
    context = extra.get("context") == "rpa"
    fusion = extra.get("fusion") == "apf"
    per_class = per_class_decoders(extra)
    if not (sharp or context or fusion or per_class):
        return model
    pairs = [(m.decoder, m.segmentation_head) for m in more_classes or []]
    return UnetWithExtras(model, sharp, context, fusion, pairs, per_class and softmax)

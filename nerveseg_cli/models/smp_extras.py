"""Custom options on segmentation_models_pytorch networks, without touching smp's code.

- ``activation``: every ``nn.ReLU`` module of the decoder is replaced (seed 000's comparison).
- ``skip sharp`` (unet, unetplusplus): the encoder features the decoder uses as skips pass
  :class:`~nerveseg_cli.models.blocks.SharpenSkip` first (seed 003); the deepest map, which
  starts the decoder rather than joining it, is left alone, as in Sharp U-Net.
- ``context rpa`` (unet): the deepest encoder map passes seed 002's RPA module.
- ``fusion apf`` (unet): the outputs of the last three decoder blocks (read with forward hooks)
  are fused by seed 002's APF module, which feeds the segmentation head.

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


def check_smp_extras(arch: str, extra: dict[str, Any]) -> None:
    """Validate the values of the custom options on an smp architecture."""
    check_skip(extra.get("skip"))
    if extra.get("context") not in (None, *CONTEXTS):
        raise NervesegError(f"--context {extra['context']!r}: use {' or '.join(CONTEXTS)}")
    if extra.get("fusion") not in (None, *FUSIONS):
        raise NervesegError(f"--fusion {extra['fusion']!r}: use {' or '.join(FUSIONS)}")


def _out_channels(module: nn.Module) -> int:
    """Output channels of a block: those of its last convolution."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NervesegError(f"cannot find the channels of {type(module).__name__}")
    return convs[-1].out_channels


class UnetWithExtras(nn.Module):
    """An smp model with sharp skips, RPA on the deepest features and/or APF in the decoder."""

    def __init__(self, model: nn.Module, sharp: bool, context: bool, fusion: bool) -> None:
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

    def _keep_output(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._pyramid.append(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = list(self.model.encoder(x))
        if self.sharpen is not None:
            # features[0] is the input itself (never a skip); features[-1] starts the decoder
            features[1:-1] = [self.sharpen(f) for f in features[1:-1]]
        if self.context is not None:
            features[-1] = self.context(features[-1])
        self._pyramid = []
        decoded = self.model.decoder(features)
        if self.fusion is not None:
            decoded = self.fusion(self._pyramid)
            self._pyramid = []
        masks = self.model.segmentation_head(decoded)
        head = getattr(self.model, "classification_head", None)
        if head is not None:
            return masks, head(features[-1])
        return masks


def extend_smp(model: nn.Module, extra: dict[str, Any]) -> nn.Module:
    """Apply the options of ``extra`` to a freshly built smp model (validated before)."""
    activation = extra.get("activation")
    if activation is not None and replace_activations(model.decoder, activation) == 0:
        raise NervesegError(f"--activation {activation}: the {type(model).__name__} decoder has "
                            "no ReLU modules to replace")
    sharp = extra.get("skip") == "sharp"
    context = extra.get("context") == "rpa"
    fusion = extra.get("fusion") == "apf"
    if not (sharp or context or fusion):
        return model
    return UnetWithExtras(model, sharp, context, fusion)

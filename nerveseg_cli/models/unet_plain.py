"""The plain U-Net trained from scratch (seeds 001, 003, 004) and Sharp U-Net (seed 003).

Five levels of ``width * (1, 2, 4, 8, 16)`` filters (32-64-128-256-512 by default): two 3x3
convolutions per level, 2x2 max pooling down, 2x2 transposed convolutions up, concatenation with
the encoder map of the same level, two 3x3 convolutions, and a 1x1 convolution to one logit.
Without batch norm and with one input channel it has 7,759,521 parameters at width 32, seed
001's Table I figure; ``--width 35`` (35-70-140-280-560) is seed 003's Wide U-Net.

``--skip sharp`` passes every skip through seed 003's fixed sharpening filter; ``sharp-unet`` is
this network with sharp skips. ``--activation`` changes the decoder's activations.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import torch
from torch import nn

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.models.blocks import DoubleConv, PresenceHead, SharpenSkip, make_activation
from nerveseg_cli.models.registry import ModelConfig, SegmentationNet, extra_option, register
from nerveseg_cli.models.unet_family import (
    UNetSkeleton,
    build_unet,
    decoder_modules,
    encoder_blocks,
    level_widths,
)

DEFAULTS = {"skip": "plain", "width": 32, "batch_norm": False, "activation": "relu"}


class PlainUNet(UNetSkeleton):
    """Ronneberger's U-Net with 'same' padding (module docstring)."""

    def __init__(self, in_channels: int = 1, width: int = 32, batch_norm: bool = False,
                 sharp: bool = False, activation: str = "relu",
                 presence_head: bool = False, out_channels: int = 1,
                 presence_outputs: int = 1) -> None:
        super().__init__()
        make_activation(activation)  # refuse a bad name before building anything
        widths = level_widths(width)
        self.encoder = encoder_blocks(
            in_channels, widths, lambda c_in, c_out: DoubleConv(c_in, c_out, batch_norm, "relu"))
        self.pool = nn.MaxPool2d(2)
        self.upsample = decoder_modules(
            lambda i: nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
        self.decoder = decoder_modules(
            lambda i: DoubleConv(2 * widths[i], widths[i], batch_norm, activation))
        self.skip = SharpenSkip() if sharp else nn.Identity()
        self.head = nn.Conv2d(width, out_channels, 1)
        self.presence = PresenceHead(widths[-1], presence_outputs) if presence_head else None

    def join(self, index: int, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.upsample[index](coarse), self.skip(skip)], dim=1)


@register("unet-plain", options=tuple(DEFAULTS))
def build_unet_plain(config: ModelConfig) -> SegmentationNet:
    return build_unet(config, "unet-plain", PlainUNet, DEFAULTS)


@register("sharp-unet", options=tuple(DEFAULTS))
def build_sharp_unet(config: ModelConfig) -> SegmentationNet:
    # Refused before the width is checked, as the skip was always the first option read.
    skip = extra_option(config, "skip", "sharp")
    if skip != "sharp":
        raise NervesegError(f"--skip {skip} does not apply to --arch sharp-unet (its skips are "
                            "sharp); use --arch unet-plain")
    return build_unet(config, "sharp-unet", PlainUNet, {**DEFAULTS, "skip": "sharp"})

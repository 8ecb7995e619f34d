"""The plain U-Net trained from scratch (seeds 001, 003, 004) and Sharp U-Net (seed 003).

Five levels of ``width * (1, 2, 4, 8, 16)`` filters (32-64-128-256-512 by default): two 3x3
convolutions per level, 2x2 max pooling down, 2x2 transposed convolutions up, concatenation with
the encoder map of the same level, two 3x3 convolutions, and a 1x1 convolution to one logit.
Without batch norm and with one input channel it has 7,759,521 parameters at width 32, seed
001's Table I figure; ``--width 35`` (35-70-140-280-560) is seed 003's Wide U-Net.

``--skip sharp`` passes every skip through seed 003's fixed sharpening filter; ``sharp-unet`` is
this network with sharp skips. ``--activation`` changes the decoder's activations.
"""

from __future__ import annotations

import torch
from torch import nn

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.models import ModelConfig, SegmentationNet, extra_option, register
from nerveseg_cli.models.blocks import (
    DoubleConv,
    PresenceHead,
    SharpenSkip,
    check_skip,
    check_width,
    make_activation,
)

LEVELS = 5
SIZE_MULTIPLE = 2 ** (LEVELS - 1)


class PlainUNet(nn.Module):
    """Ronneberger's U-Net with 'same' padding (module docstring)."""

    def __init__(self, in_channels: int = 1, width: int = 32, batch_norm: bool = False,
                 sharp: bool = False, activation: str = "relu",
                 presence_head: bool = False) -> None:
        super().__init__()
        make_activation(activation)
        widths = [width * 2 ** i for i in range(LEVELS)]
        self.encoder = nn.ModuleList(
            DoubleConv(c_in, c_out, batch_norm, "relu")
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True))
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(LEVELS - 1)))
        self.decoder = nn.ModuleList(
            DoubleConv(2 * widths[i], widths[i], batch_norm, activation)
            for i in reversed(range(LEVELS - 1)))
        self.skip = SharpenSkip() if sharp else nn.Identity()
        self.head = nn.Conv2d(width, 1, 1)
        self.presence = PresenceHead(widths[-1]) if presence_head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        bottom = skips.pop()
        x = bottom
        for upsample, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([upsample(x), self.skip(skips.pop())], dim=1))
        logits = self.head(x)
        return (logits, self.presence(bottom)) if self.presence is not None else logits


def _build(config: ModelConfig, sharp_default: bool, arch: str) -> SegmentationNet:
    skip = extra_option(config, "skip", "sharp" if sharp_default else "plain")
    if sharp_default and skip != "sharp":
        raise NervesegError(f"--skip {skip} does not apply to --arch sharp-unet (its skips are "
                            "sharp); use --arch unet-plain")
    net = PlainUNet(config.in_channels, check_width(extra_option(config, "width", 32), arch),
                    bool(extra_option(config, "batch_norm", False)), check_skip(skip),
                    extra_option(config, "activation", "relu"), config.presence_head)
    return SegmentationNet(net, SIZE_MULTIPLE, config.presence_head)


@register("unet-plain", options=("skip", "width", "batch_norm", "activation"))
def build_unet_plain(config: ModelConfig) -> SegmentationNet:
    return _build(config, False, "unet-plain")


@register("sharp-unet", options=("skip", "width", "batch_norm", "activation"))
def build_sharp_unet(config: ModelConfig) -> SegmentationNet:
    return _build(config, True, "sharp-unet")

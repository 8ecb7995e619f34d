"""R2U-Net (Alom et al. 2018) as seed 001 ran it: recurrent residual convolutional units.

Five levels of ``width * (1, 2, 4, 8, 16)`` filters (16-256 as seed 001 reports, ``--width 16``
is the default). Each level is a recurrent residual block: a 1x1 convolution to the level's
width when the channel count changes, then two recurrent convolutional layers, and the block's
input added back. A recurrent layer with t = 2 is unrolled in time: ``h0 = f(conv0(x))``,
``h1 = f(conv1(x + h0))``, ``h2 = f(conv2(x + h1))`` (f = ReLU after optional batch norm), with
one set of weights per step: the layout that has exactly seed 001's 6,003,009 parameters at width
16, which tied weights would not. Down: 2x2 max pooling; up: nearest 2x upsampling and
concatenation with the encoder map; a 1x1 convolution gives the logit.

``--batch-norm`` adds batch norm after every 3x3 convolution (seed 001's final R2U-Net used it;
its parameter figure is without); ``--activation`` changes the decoder's activations.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import torch
from torch import nn

from nerveseg_cli.models.blocks import PresenceHead, conv_norm_act, upsample_to
from nerveseg_cli.models.registry import ModelConfig, SegmentationNet, register
from nerveseg_cli.models.unet_family import (
    UNetSkeleton,
    build_unet,
    decoder_modules,
    encoder_blocks,
    level_widths,
)

RECURRENT_STEPS = 2
LAYERS_PER_BLOCK = 2
DEFAULTS = {"width": 16, "batch_norm": False, "activation": "relu"}


class RecurrentConv(nn.Module):
    """A recurrent convolutional layer unrolled for ``steps`` steps (module docstring)."""

    def __init__(self, channels: int, batch_norm: bool, activation: str,
                 steps: int = RECURRENT_STEPS) -> None:
        super().__init__()
        self.steps = nn.ModuleList(conv_norm_act(channels, channels, 3, batch_norm, activation)
                                   for _ in range(steps + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.steps[0](x)
        for step in self.steps[1:]:
            h = step(x + h)
        return h


class RecurrentResidualBlock(nn.Module):
    """1x1 projection when needed, two recurrent layers, residual addition."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool,
                 activation: str) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1) \
            if in_channels != out_channels else nn.Identity()
        self.layers = nn.Sequential(*(RecurrentConv(out_channels, batch_norm, activation)
                                      for _ in range(LAYERS_PER_BLOCK)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return x + self.layers(x)


class R2UNet(UNetSkeleton):
    def __init__(self, in_channels: int = 1, width: int = 16, batch_norm: bool = False,
                 activation: str = "relu", presence_head: bool = False,
                 out_channels: int = 1, presence_outputs: int = 1) -> None:
        super().__init__()
        widths = level_widths(width)
        self.encoder = encoder_blocks(
            in_channels, widths,
            lambda c_in, c_out: RecurrentResidualBlock(c_in, c_out, batch_norm, "relu"))
        self.pool = nn.MaxPool2d(2)
        self.decoder = decoder_modules(lambda i: RecurrentResidualBlock(
            widths[i] + widths[i + 1], widths[i], batch_norm, activation))
        self.head = nn.Conv2d(width, out_channels, 1)
        self.presence = PresenceHead(widths[-1], presence_outputs) if presence_head else None

    def join(self, index: int, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, upsample_to(coarse, skip)], dim=1)


@register("r2unet", options=tuple(DEFAULTS))
def build_r2unet(config: ModelConfig) -> SegmentationNet:
    return build_unet(config, "r2unet", R2UNet, DEFAULTS)

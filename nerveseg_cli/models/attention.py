"""Attention U-Net (Oktay et al. 2018) and seed 001's Attention Residual U-Net (AttResUNet).

Encoder: five levels of ``width * (1, 2, 4, 8, 16)`` filters (32-512 by default) with 2x2 max
pooling between them; a level is two 3x3 convolutions (``attention-unet``) or a residual block
(``attention-resunet``: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus a 1x1 conv + BN shortcut, then
ReLU). Decoder, at each level from the deepest up:

- gating signal: a 1x1 convolution (+ BN + ReLU) of the coarser decoder map to the level's
  width;
- attention gate on the encoder map x (additive attention): theta = 2x2 stride-2 convolution of
  x, phi = 1x1 convolution of the gate followed by a 3x3 convolution, ReLU(theta + phi), a 1x1
  convolution to one channel, sigmoid, nearest upsampling to x's size, x times the
  coefficients, then a 1x1 convolution + BN;
- nearest 2x upsampling of the coarser map, concatenation with the gated skip, one level block.

A 1x1 convolution (+ BN) gives the logit. This is the layout whose size matches seed 001's
Table I: 9,786,857 = 9,776,103 trainable parameters + 10,754 batch-norm running statistics
(Keras counts both) at width 32, one input channel (docs/models.md).

``--batch-norm`` is on by default; ``--activation`` changes the decoder blocks' activations
(the gate keeps its ReLU, part of the attention formula).

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import torch
from torch import nn

from nerveseg_cli.models.blocks import (
    DoubleConv,
    PresenceHead,
    conv_norm_act,
    make_activation,
    upsample_to,
)
from nerveseg_cli.models.registry import ModelConfig, SegmentationNet, register
from nerveseg_cli.models.unet_family import (
    UNetSkeleton,
    build_unet,
    decoder_modules,
    encoder_blocks,
    level_widths,
)

DEFAULTS = {"width": 32, "batch_norm": True, "activation": "relu"}


class ResidualBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN plus a 1x1 conv-BN shortcut, then the activation."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool,
                 activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(in_channels, out_channels, 3, batch_norm, activation),
            conv_norm_act(out_channels, out_channels, 3, batch_norm, None))
        self.shortcut = conv_norm_act(in_channels, out_channels, 1, batch_norm, None)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate: the skip ``x`` weighted by coefficients in [0, 1] computed from
    ``x`` and the coarser gating signal ``g`` (module docstring)."""

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int,
                 batch_norm: bool) -> None:
        super().__init__()
        self.theta = nn.Conv2d(skip_channels, inter_channels, 2, stride=2)
        self.phi = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1),
                                 nn.Conv2d(inter_channels, inter_channels, 3, padding=1))
        self.psi = nn.Conv2d(inter_channels, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Sequential(nn.Conv2d(skip_channels, skip_channels, 1),
                                 nn.BatchNorm2d(skip_channels) if batch_norm else nn.Identity())

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x)
        joint = self.relu(theta + upsample_to(self.phi(gate), theta))
        coefficients = upsample_to(torch.sigmoid(self.psi(joint)), x)
        return self.out(x * coefficients)


class AttentionUNet(UNetSkeleton):
    """Attention U-Net; ``residual=True`` gives seed 001's AttResUNet (module docstring)."""

    def __init__(self, in_channels: int = 1, width: int = 32, batch_norm: bool = True,
                 residual: bool = True, activation: str = "relu",
                 presence_head: bool = False, out_channels: int = 1,
                 presence_outputs: int = 1) -> None:
        super().__init__()
        block = ResidualBlock if residual else DoubleConv
        widths = level_widths(width)
        self.encoder = encoder_blocks(
            in_channels, widths, lambda c_in, c_out: block(c_in, c_out, batch_norm, "relu"))
        self.pool = nn.MaxPool2d(2)
        # All gating convolutions, then all gates, then the decoder blocks: the order of
        # creation that fixes the random initialisation of existing runs.
        self.gating = decoder_modules(
            lambda i: conv_norm_act(widths[i + 1], widths[i], 1, batch_norm, activation))
        self.gates = decoder_modules(
            lambda i: AttentionGate(widths[i], widths[i], widths[i], batch_norm))
        self.decoder = decoder_modules(
            lambda i: block(widths[i + 1] + widths[i], widths[i], batch_norm, activation))
        self.head = nn.Sequential(nn.Conv2d(width, out_channels, 1),
                                  nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity())
        self.presence = PresenceHead(widths[-1], presence_outputs) if presence_head else None

    def join(self, index: int, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        attended = self.gates[index](skip, self.gating[index](coarse))
        return torch.cat([upsample_to(coarse, skip), attended], dim=1)


@register("attention-unet", options=tuple(DEFAULTS))
def build_attention_unet(config: ModelConfig) -> SegmentationNet:
    return build_unet(config, "attention-unet", AttentionUNet, DEFAULTS, residual=False)


@register("attention-resunet", options=tuple(DEFAULTS))
def build_attention_resunet(config: ModelConfig) -> SegmentationNet:
    return build_unet(config, "attention-resunet", AttentionUNet, DEFAULTS, residual=True)

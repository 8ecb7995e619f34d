"""Seed 001's best model: a U-Net of inception blocks with a presence head in the bottleneck.

Seed 001 took it from a public Kaggle kernel ("U-Net inception with 2 heads"); the layout below
is the one whose size is exactly the 1,865,676 of seed 001's Table I (1,858,972 trainable
parameters + 6,704 batch-norm running statistics, which Keras counts) for one input channel at
width 32 and the seed's 80x112 input:

- inception block of depth d: concatenation of a 1x1 convolution (d/4); 1x1 (3d/8), act,
  1x3 (d/2), BN, act, 3x1 (d/2); 1x1 (d/16), act, 1x5 (d/8), BN, act, 5x1 (d/8); 3x3 max pooling
  (stride 1), 1x1 (d/8); then BN and the activation (ELU);
- encoder: inception blocks of depth ``width * (1, 2, 4, 8, 16)``, each followed (but the last)
  by a 3x3 stride-2 convolution + BN + ELU and dropout 0.5; dropout 0.5 on the bottleneck;
- decoder: nearest 2x upsampling, concatenation with the encoder map passed through a scaled
  residual unit (x + 0.1 BN(conv1x1(x)), ELU), an inception block, dropout 0.5; a 1x1
  convolution gives the mask logit;
- presence head on the bottleneck: 1x1 convolution to one channel, sigmoid, then the seed's
  dense unit over the 5x7 map. To accept any input size, the map is average-pooled to 5x7 first
  (an identity at the seed's 80x112 input, so the parameters are the same).

The mask and presence logits are trained with ``--loss dice --presence-weight 0.5`` in the
``seed001-inception-twohead`` recipe (seed 001: Dice loss plus BCE weighted half). ``--width``
must be a multiple of 16; ``--activation`` changes the decoder's activations (ELU by default).

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import torch
from torch import nn

from nerveseg_cli.models.blocks import conv_norm_act, make_activation, upsample_to
from nerveseg_cli.models.registry import ModelConfig, SegmentationNet, register
from nerveseg_cli.models.unet_family import LEVELS, UNetSkeleton, build_unet, level_widths

DEFAULTS = {"width": 32, "activation": "elu"}
WIDTH_MULTIPLE = 16  # the narrowest branch has depth / 16 filters
DROPOUT = 0.5
RESIDUAL_SCALE = 0.1
PRESENCE_GRID = (5, 7)  # the bottleneck of seed 001's 80x112 input


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1-1x3-3x1; 1x1-1x5-5x1; pool-1x1), BN, activation."""

    def __init__(self, in_channels: int, depth: int, activation: str) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(in_channels, depth // 4, 1)
        self.branch3 = nn.Sequential(
            conv_norm_act(in_channels, depth // 8 * 3, 1, False, activation),
            conv_norm_act(depth // 8 * 3, depth // 2, (1, 3), True, activation),
            conv_norm_act(depth // 2, depth // 2, (3, 1), False, None))
        self.branch5 = nn.Sequential(
            conv_norm_act(in_channels, depth // 16, 1, False, activation),
            conv_norm_act(depth // 16, depth // 8, (1, 5), True, activation),
            conv_norm_act(depth // 8, depth // 8, (5, 1), False, None))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                         nn.Conv2d(in_channels, depth // 8, 1))
        self.out_channels = depth // 4 + depth // 2 + depth // 8 + depth // 8
        self.norm = nn.BatchNorm2d(self.out_channels)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        return self.activation(self.norm(torch.cat(branches, dim=1)))


class ScaledResidual(nn.Module):
    """x + 0.1 * BN(conv1x1(x)), then the activation (the skip path of the decoder)."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.residual = conv_norm_act(channels, channels, 1, True, None)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + RESIDUAL_SCALE * self.residual(x))


class InceptionPresence(nn.Module):
    """1x1 conv to one channel, sigmoid, average pooling to 5x7, one dense unit per class (the
    logits)."""

    def __init__(self, channels: int, outputs: int = 1) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(PRESENCE_GRID)
        self.dense = nn.Linear(PRESENCE_GRID[0] * PRESENCE_GRID[1], outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pool(torch.sigmoid(self.squeeze(x))).flatten(1))


class InceptionUNet(UNetSkeleton):
    def __init__(self, in_channels: int = 1, width: int = 32, activation: str = "elu",
                 presence_head: bool = True, out_channels: int = 1,
                 presence_outputs: int = 1) -> None:
        super().__init__()
        depths = level_widths(width)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        channels = in_channels
        # Each encoder block and its downsampling are created in turn (the order of creation
        # fixes the random initialisation), and a block's output width feeds the next module.
        for level, depth in enumerate(depths):
            block = InceptionBlock(channels, depth, "elu")
            self.encoder.append(block)
            channels = block.out_channels
            if level < LEVELS - 1:
                self.down.append(nn.Sequential(
                    conv_norm_act(channels, depth, 3, True, "elu", stride=2),
                    nn.Dropout(DROPOUT)))
                channels = depth
        self.bottleneck_dropout = nn.Dropout(DROPOUT)
        self.skips = nn.ModuleList(ScaledResidual(d, activation)
                                   for d in reversed(depths[:-1]))
        self.decoder = nn.ModuleList()
        for depth in reversed(depths[:-1]):
            block = InceptionBlock(channels + depth, depth, activation)
            self.decoder.append(nn.Sequential(block, nn.Dropout(DROPOUT)))
            channels = block.out_channels
        self.head = nn.Conv2d(channels, out_channels, 1)
        self.presence = InceptionPresence(depths[-1], presence_outputs) if presence_head \
            else None

    def downsample(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return self.down[level](x)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck_dropout(x)

    def join(self, index: int, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([upsample_to(coarse, skip), self.skips[index](skip)], dim=1)


@register("inception-unet", options=tuple(DEFAULTS))
def build_inception_unet(config: ModelConfig) -> SegmentationNet:
    return build_unet(config, "inception-unet", InceptionUNet, DEFAULTS, WIDTH_MULTIPLE)

"""Seed 002 (Wu et al., AAAI 2021): region-aware global context modelling for nerve segmentation.

A U-Net on a ResNet-34 encoder with two additions, each available on smp ``unet`` for the
paper's ablation (``--context rpa``, ``--fusion apf``; smp_extras.py wires them in):

- :class:`RegionPyramidAggregation` (RPA) on the deepest encoder features: adaptive average
  pooling to 3x3, 7x7 and 11x11 regions, a 1x1 projection to C/4 channels with ReLU, bilinear
  upsampling back to H x W (eq. 1); per branch two 1x1 convolutions give queries and keys
  (eq. 2), an (HW x HW) attention map with a softmax over the keys (eq. 3-4) weights the values
  delta(X), a 1x1 projection of the input to C/4 channels shared by the branches (eq. 5); the
  input and the three regional features are concatenated (eq. 6).
- :class:`AdaptivePyramidFusion` (APF) over the last three decoder levels: bilinear upsampling
  to the finest, concatenation, a 1x1 reduction (eq. 7), and efficient channel attention: global
  average pooling, two 1-D convolutions across channels, a sigmoid, ``Y = F + F * w`` (eq. 8).

Choices where the paper is silent (docs/models.md): the query-key product is scaled by
1/sqrt(C/4) as in the attention paper it builds on (the unscaled product saturates the softmax
at initialisation for C/4 = 128); the concatenation (C + 3C/4 channels) is projected back to C by
a 1x1 convolution with batch norm and ReLU, so the decoder is the unchanged U-Net decoder; the
two 1-D convolutions share ECA's adaptive kernel size and have a ReLU between them; the fused
map has the finest decoder level's channels and feeds the usual segmentation head.

``ragcm`` is ``unet --context rpa --fusion apf`` with the encoder you pass (the paper: resnet34
with ImageNet weights, as the ``seed002-ragcm`` recipe sets), registered beside smp's U-Net in
:mod:`.smp_models`; this module holds the two modules.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PYRAMID_BINS = (3, 7, 11)
REDUCTION = 4
APF_LEVELS = 3


class RegionPyramidAggregation(nn.Module):
    """RPA: regional self-attention at three pyramid scales, concatenated with the input and
    projected back to ``channels`` (module docstring)."""

    def __init__(self, channels: int, bins: Sequence[int] = PYRAMID_BINS,
                 reduction: int = REDUCTION) -> None:
        super().__init__()
        reduced = max(1, channels // reduction)
        self.bins = tuple(bins)
        self.scale = 1.0 / math.sqrt(reduced)
        self.regions = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, reduced, 1),
                          nn.ReLU(inplace=True)) for b in self.bins)
        self.queries = nn.ModuleList(nn.Conv2d(reduced, reduced, 1) for _ in self.bins)
        self.keys = nn.ModuleList(nn.Conv2d(reduced, reduced, 1) for _ in self.bins)
        self.values = nn.Conv2d(channels, reduced, 1)
        self.project = nn.Sequential(
            nn.Conv2d(channels + len(self.bins) * reduced, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        values = self.values(x).flatten(2)  # (N, C/4, HW)
        parts = [x]
        for region, query, key in zip(self.regions, self.queries, self.keys, strict=True):
            regional = F.interpolate(region(x), size=(height, width), mode="bilinear",
                                     align_corners=False)
            q = query(regional).flatten(2)  # (N, C/4, HW)
            k = key(regional).flatten(2)
            attention = torch.softmax(q.transpose(1, 2) @ k * self.scale, dim=-1)  # (N, HW, HW)
            parts.append((values @ attention.transpose(1, 2)).view(n, -1, height, width))
        return self.project(torch.cat(parts, dim=1))


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive 1-D kernel size: the odd number nearest to log2(C)/gamma + b/gamma."""
    size = int(abs(math.log2(channels) / gamma + b / gamma))
    return max(3, size if size % 2 else size + 1)


class AdaptivePyramidFusion(nn.Module):
    """APF: fuse decoder maps (coarse to fine) at the finest resolution with channel attention."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(sum(in_channels), out_channels, 1)
        k = eca_kernel_size(out_channels)
        self.channel_attention = nn.Sequential(
            nn.Conv1d(1, 1, k, padding=k // 2, bias=False), nn.ReLU(inplace=True),
            nn.Conv1d(1, 1, k, padding=k // 2, bias=False))

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = maps[-1].shape[-2:]
        aligned = [m if m.shape[-2:] == size else
                   F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                   for m in maps]
        fused = self.reduce(torch.cat(aligned, dim=1))
        pooled = fused.mean(dim=(2, 3)).unsqueeze(1)  # (N, 1, C)
        weights = torch.sigmoid(self.channel_attention(pooled)).transpose(1, 2).unsqueeze(-1)
        return fused + fused * weights

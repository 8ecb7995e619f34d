"""The skeleton shared by the custom U-Nets (``unet_plain``, ``r2unet``, ``attention``,
``inception``): five levels of ``width * (1, 2, 4, 8, 16)`` filters, one forward pass and one
builder.

An architecture subclasses :class:`UNetSkeleton`, creates its modules in ``__init__`` (the
order of creation fixes the random initialisation, so it stays each architecture's own) and
overrides the hooks :meth:`~UNetSkeleton.downsample`, :meth:`~UNetSkeleton.bottleneck` and
:meth:`~UNetSkeleton.join`; the forward pass is :meth:`UNetSkeleton.forward`, as in
segmentation_models_pytorch, where every architecture inherits ``SegmentationModel.forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nerveseg_cli.models.blocks import check_skip, check_width
from nerveseg_cli.models.registry import ModelConfig, SegmentationNet, extra_option

LEVELS = 5
SIZE_MULTIPLE = 2 ** (LEVELS - 1)  # one 2x downsampling between consecutive levels
# Encoder levels the decoder climbs back through, deepest first (the deepest is the bottleneck).
DECODER_LEVELS = tuple(reversed(range(LEVELS - 1)))


def level_widths(width: int) -> list[int]:
    """Filters per level, finest first: ``width * (1, 2, 4, 8, 16)``."""
    return [width * 2 ** i for i in range(LEVELS)]


def encoder_blocks(in_channels: int, widths: list[int],
                   make: Callable[[int, int], nn.Module]) -> nn.ModuleList:
    """One ``make(in_channels, out_channels)`` block per level, each fed the previous level."""
    return nn.ModuleList(make(c_in, c_out)
                         for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True))


def decoder_modules(make: Callable[[int], nn.Module]) -> nn.ModuleList:
    """One ``make(level)`` module per decoder step, in :data:`DECODER_LEVELS` order."""
    return nn.ModuleList(make(level) for level in DECODER_LEVELS)


class UNetSkeleton(nn.Module):
    """Encoder, bottleneck, decoder, head and optional presence head, run by one ``forward``.

    Subclasses set ``encoder`` (one block per level), ``decoder`` (one block per decoder step,
    deepest first), ``head`` and ``presence`` (a module reading the bottleneck map, or None),
    and ``pool`` when they keep the default :meth:`downsample`.
    """

    encoder: nn.ModuleList
    decoder: nn.ModuleList
    head: nn.Module
    presence: nn.Module | None
    pool: nn.Module

    def downsample(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """From the output of encoder level ``level`` to the input of the next one."""
        return self.pool(x)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest encoder map as the decoder and the presence head see it."""
        return x

    def join(self, index: int, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The input of decoder block ``index``: the coarser map joined with its skip."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.downsample(level - 1, x))
            skips.append(x)
        bottom = self.bottleneck(skips.pop())
        x = bottom
        for index, block in enumerate(self.decoder):
            x = block(self.join(index, x, skips.pop()))
        logits = self.head(x)
        return (logits, self.presence(bottom)) if self.presence is not None else logits


def build_unet(config: ModelConfig, arch: str, net_class: Callable[..., nn.Module],
               defaults: Mapping[str, Any], width_multiple: int = 1,
               **fixed: Any) -> SegmentationNet:
    """Build ``net_class`` from a config: the extra options named in ``defaults`` (unset ones
    take the architecture's default there), a checked width, and ``fixed`` keyword arguments.

    ``skip`` becomes the ``sharp`` flag and ``batch_norm`` a bool; the width is checked before
    the skip, as the architectures always did (the first bad option is the one reported).
    """
    options = {key: extra_option(config, key, default) for key, default in defaults.items()}
    options["width"] = check_width(options["width"], arch, width_multiple)
    if "skip" in options:
        options["sharp"] = check_skip(options.pop("skip"))
    if "batch_norm" in options:
        options["batch_norm"] = bool(options["batch_norm"])
    net = net_class(in_channels=config.in_channels, presence_head=config.presence_head,
                    out_channels=config.mask_channels,
                    presence_outputs=config.presence_channels, **options, **fixed)
    return SegmentationNet(net, SIZE_MULTIPLE, config.presence_head)

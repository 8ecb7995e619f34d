"""A network as ``torch.onnx.export`` (the TorchScript-based exporter) can trace it.

:func:`exportable` returns what ``nerveseg export`` hands to the exporter: the network's
``(mask_logits, presence_logits)`` as plain outputs (no ``None``), with the few modules the
exporter cannot translate for inputs of any height and width replaced by equivalents it can. The
replacements compute the same function (the export check compares ONNX Runtime's outputs with
the original network's, never with these), and the network the caller passed is left as it
was (the replacements go into a copy):

- :class:`torch.nn.AdaptiveAvgPool2d` to a grid larger than 1x1 (RAGCM's 3/7/11 region pyramid,
  seed 001's 5x7 presence grid, smp's PSPNet and UPerNet): the exporter handles it only when the
  input size is a known multiple of the grid. :class:`MatmulAdaptiveAvgPool2d` averages the same
  bins (``floor(i H / n)`` to ``ceil((i + 1) H / n)``, torch's rule) as two matrix products
  with averaging matrices built from the input's size inside the graph. smp's PSPNet block,
  which switches to an equivalent "area" interpolation under export (translated to the same
  pooling), becomes :class:`ExportPSPBlock`, the same block on this pooling.
- :class:`~nerveseg_cli.models.blocks.SharpenSkip` (seed 003): its depthwise kernel is expanded
  to the input's channel count, a traced value for which the exporter refuses a convolution;
  :class:`ExportSharpenSkip` reads the count as a constant (a layer's channel count is fixed).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from nerveseg_cli.models.blocks import SharpenSkip
from nerveseg_cli.models.registry import SegmentationNet


class ExportOutputs(nn.Module):
    """A :class:`SegmentationNet` whose outputs are ``mask_logits`` alone, or ``(mask_logits,
    presence_logits)`` with a presence head."""

    def __init__(self, net: SegmentationNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mask, presence = self.net(x)
        return mask if presence is None else (mask, presence)


def _pool_matrix(size: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size): row i averages input positions floor(i size / bins) to
    ceil((i + 1) size / bins) - 1, as adaptive average pooling does."""
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    positions = torch.arange(size, device=like.device)
    inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class MatmulAdaptiveAvgPool2d(nn.Module):
    """Adaptive average pooling to (bins_h, bins_w) as ``P_h @ x @ P_w^T``."""

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _pool_matrix(x.shape[-2], self.output_size[0], x)
        columns = _pool_matrix(x.shape[-1], self.output_size[1], x)
        return torch.matmul(torch.matmul(rows, x), columns.transpose(0, 1))


class ExportSharpenSkip(nn.Module):
    """:class:`SharpenSkip` with the channel count read as a constant."""

    def __init__(self, original: SharpenSkip) -> None:
        super().__init__()
        self.register_buffer("kernel", original.kernel.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = int(x.shape[1])
        if channels == 0:
            return x
        weight = self.kernel.to(dtype=x.dtype).expand(channels, 1, 3, 3)
        return F.conv2d(x, weight, padding=1, groups=channels)


class ExportPSPBlock(nn.Module):
    """smp's ``PSPBlock`` (pool, 1x1 conv-norm-ReLU, bilinear back to the input's size) on
    :class:`MatmulAdaptiveAvgPool2d`."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        size = int(original.pool_size)
        self.pool = MatmulAdaptiveAvgPool2d((size, size))
        self.conv = original.pool[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        return F.interpolate(self.conv(self.pool(x)), size=(height, width), mode="bilinear",
                             align_corners=True)


def _is_psp_block(module: nn.Module) -> bool:
    return type(module).__name__ == "PSPBlock" and \
        type(module).__module__.startswith("segmentation_models_pytorch.")


def _replacement(module: nn.Module) -> nn.Module | None:
    if _is_psp_block(module):
        return ExportPSPBlock(module) if module.pool_size != 1 else None
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if None in size or size == (1, 1):  # "keep the size", or global pooling: exported
            return None
        return MatmulAdaptiveAvgPool2d((int(size[0]), int(size[1])))
    if isinstance(module, SharpenSkip):
        return ExportSharpenSkip(module)
    return None


def exportable(net: SegmentationNet) -> tuple[nn.Module, list[str]]:
    """The module to export and the names of the modules replaced (module docstring)."""
    replaced = []
    if any(_replacement(module) is not None for module in net.modules()):
        net = copy.deepcopy(net)
        _replace(net, "", replaced)
    return ExportOutputs(net).eval(), replaced


def _replace(module: nn.Module, prefix: str, replaced: list[str]) -> None:
    """Replace in place, outermost first (a replaced block's insides are not visited)."""
    for name, child in list(module.named_children()):
        new = _replacement(child)
        if new is not None:
            setattr(module, name, new)
            replaced.append(prefix + name)
        else:
            _replace(child, f"{prefix}{name}.", replaced)

"""Building blocks shared by the custom architectures (docs/models.md).

- :class:`SharpenSkip`: seed 003's sharp block, a fixed depthwise sharpening convolution.
- :func:`make_activation` / :func:`replace_activations`: seed 000's decoder activations.
- :class:`DoubleConv`: two 3x3 convolutions, the U-Net stage.
- :class:`PresenceHead`: an image-level "nerve present" logit from bottleneck features.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nerveseg_cli.errors import NervesegError

ACTIVATIONS = ("relu", "leakyrelu", "elu", "mish", "swish")
SKIPS = ("plain", "sharp")
LEAKY_SLOPE = 0.01  # PyTorch's default negative slope (Keras uses 0.3)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name: relu, leakyrelu, elu, mish or swish (= SiLU)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leakyrelu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    raise NervesegError(f"--activation {name!r}: use {', '.join(ACTIVATIONS)}")


def replace_activations(module: nn.Module, name: str) -> int:
    """Replace every ``nn.ReLU`` inside ``module`` by the named activation; returns how many."""
    make_activation(name)  # validate even when nothing is replaced
    replaced = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, make_activation(name))
                replaced += 1
    return replaced


def check_skip(skip: str | None) -> bool:
    """True for sharp skips; validates the option."""
    if skip not in (None, *SKIPS):
        raise NervesegError(f"--skip {skip!r}: use {' or '.join(SKIPS)}")
    return skip == "sharp"


def check_width(width: int, arch: str, multiple: int = 1) -> int:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1 or width % multiple:
        need = f"a positive multiple of {multiple}" if multiple > 1 else "a positive integer"
        raise NervesegError(f"--width {width!r} for {arch}: need {need}")
    return width


class SharpenSkip(nn.Module):
    """Seed 003's sharp block: ``S = I + K * I`` per channel (eq. 1-2), with K the 8-neighbour
    Laplacian [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]], i.e. one depthwise 3x3 convolution with the
    fixed kernel I + K (centre 9, neighbours -1), zero padding, no bias.

    The kernel is a non-persistent buffer: no learnable parameter and nothing in the state dict,
    so a sharp network has exactly the parameters (and weight files) of its plain twin.
    """

    def __init__(self) -> None:
        super().__init__()
        kernel = -torch.ones(1, 1, 3, 3)
        kernel[0, 0, 1, 1] = 9.0
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == 0:  # some encoders (mix transformers) emit an empty stride-2 map
            return x
        weight = self.kernel.to(dtype=x.dtype).expand(channels, 1, 3, 3)
        return F.conv2d(x, weight, padding=1, groups=channels)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                  batch_norm: bool, activation: str | None, stride: int = 1) -> nn.Sequential:
    """Convolution ('same' padding), optional batch norm, optional activation.

    The convolution keeps its bias even before batch norm, as in the Keras networks whose sizes
    seed 001 reports (docs/models.md)."""
    size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, size, stride=stride,
                                         padding=(size[0] // 2, size[1] // 2))]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if activation is not None:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional batch norm and the activation."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool,
                 activation: str) -> None:
        super().__init__(conv_norm_act(in_channels, out_channels, 3, batch_norm, activation),
                         conv_norm_act(out_channels, out_channels, 3, batch_norm, activation))


class PresenceHead(nn.Module):
    """Global average pooling, dropout 0.2, one linear unit per class: presence logits (N, K)."""

    def __init__(self, channels: int, outputs: int = 1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.2)
        self.linear = nn.Linear(channels, outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features.mean(dim=(2, 3))))


def upsample_to(x: torch.Tensor, reference: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Resize ``x`` to the spatial size of ``reference`` (nearest or bilinear)."""
    if x.shape[-2:] == reference.shape[-2:]:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=reference.shape[-2:], mode="nearest")
    return F.interpolate(x, size=reference.shape[-2:], mode=mode, align_corners=False)

"""Fully convolutional networks FCN-32s, FCN-16s and FCN-8s on VGG-16 (Long et al.; seed 004).

Backbone: VGG-16's 13 3x3 convolutions in five blocks (2, 2, 3, 3, 3) of ``width * (1, 2, 4,
8, 8)`` filters (64-512 at the default ``--width 64``), ReLU, 2x2 max pooling after each block;
the layers sit at torchvision's indices (``encoder.features.N``), so ``--encoder-weights
imagenet`` (width 64 only) loads the library's VGG-16 ImageNet weights and ``PATH`` a VGG-16
encoder state dict. ``--batch-norm`` gives VGG-16-BN.

Head: the classifier as convolutions, fc6 = 7x7 convolution to ``64 * width`` channels (4096)
and fc7 = 1x1 to the same, each with ReLU and dropout 0.5, then a 1x1 score. FCN-16s adds a 1x1
score of pool4 to the 2x-upsampled score, FCN-8s also one of pool3; the final score is
upsampled to the input size. Upsampling is bilinear interpolation (the reference networks
initialise their deconvolutions bilinearly and keep them fixed); the pool scores start at zero,
as in the reference, so training begins from the coarser net. fc6 is padded to keep the
stride-32 map's size (instead of the reference's 100-pixel input padding and crop), and starts
from random weights (the ImageNet classifier does not carry over to a 1-logit head).

``--activation`` changes fc6 and fc7's activations.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.models.blocks import PresenceHead, check_width, make_activation
from nerveseg_cli.models.registry import (
    Builder,
    ModelConfig,
    SegmentationNet,
    extra_option,
    register,
)
from nerveseg_cli.models.weights import load_encoder_weights, offline_weights_error

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (1, 2, 4, 8, 8)
REFERENCE_WIDTH = 64
SIZE_MULTIPLE = 32


class VGG16Backbone(nn.Module):
    """VGG-16 convolutions as a ``features`` Sequential laid out like torchvision's."""

    def __init__(self, in_channels: int, width: int, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for convs, factor in zip(VGG16_BLOCKS, VGG16_WIDTHS, strict=True):
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, width * factor, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width * factor))
                layers.append(nn.ReLU(inplace=True))
                channels = width * factor
            layers.append(nn.MaxPool2d(2, stride=2))
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the five pooling layers (strides 2, 4, 8, 16, 32)."""
        pools = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pools.append(x)
        return pools


class FCN(nn.Module):
    def __init__(self, stride: int, in_channels: int = 1, width: int = REFERENCE_WIDTH,
                 batch_norm: bool = False, activation: str = "relu",
                 presence_head: bool = False, out_channels: int = 1,
                 presence_outputs: int = 1) -> None:
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride {stride}: use 8, 16 or 32")
        self.stride = stride
        self.encoder = VGG16Backbone(in_channels, width, batch_norm)
        hidden = width * 64
        self.fc6 = nn.Sequential(nn.Conv2d(self.encoder.out_channels, hidden, 7, padding=3),
                                 make_activation(activation), nn.Dropout2d(0.5))
        self.fc7 = nn.Sequential(nn.Conv2d(hidden, hidden, 1), make_activation(activation),
                                 nn.Dropout2d(0.5))
        self.score = nn.Conv2d(hidden, out_channels, 1)
        self.score_pool4 = self._zero_conv(width * VGG16_WIDTHS[3], out_channels) \
            if stride <= 16 else None
        self.score_pool3 = self._zero_conv(width * VGG16_WIDTHS[2], out_channels) \
            if stride == 8 else None
        self.presence = PresenceHead(hidden, presence_outputs) if presence_head else None

    @staticmethod
    def _zero_conv(channels: int, outputs: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, outputs, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _, _, pool3, pool4, pool5 = self.encoder(x)
        hidden = self.fc7(self.fc6(pool5))
        score = self.score(hidden)
        for pool, head in ((pool4, self.score_pool4), (pool3, self.score_pool3)):
            if head is not None:
                score = _bilinear(score, pool.shape[-2:]) + head(pool)
        logits = _bilinear(score, x.shape[-2:])
        return (logits, self.presence(hidden)) if self.presence is not None else logits


def _bilinear(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _load_backbone_weights(backbone: VGG16Backbone, config: ModelConfig, width: int,
                           batch_norm: bool) -> None:
    weights = config.encoder_weights
    if weights in (None, "", "none"):
        return
    if width != REFERENCE_WIDTH:
        raise NervesegError(f"--encoder-weights {weights} needs --width {REFERENCE_WIDTH} for "
                            f"{config.arch} (VGG-16's own width), not {width}")
    if weights != "imagenet":
        load_encoder_weights(backbone, Path(weights), config.in_channels)
        return
    from segmentation_models_pytorch.encoders import get_encoder

    name = "vgg16_bn" if batch_norm else "vgg16"
    try:
        pretrained = get_encoder(name, in_channels=config.in_channels, weights="imagenet")
    except Exception as exc:  # noqa: BLE001  network errors come in many types
        raise offline_weights_error(name, exc) from None
    backbone.features.load_state_dict(pretrained.features.state_dict())


def _builder(stride: int) -> Builder:
    arch = f"fcn{stride}s"

    def build(config: ModelConfig) -> SegmentationNet:
        width = check_width(extra_option(config, "width", REFERENCE_WIDTH), arch)
        batch_norm = bool(extra_option(config, "batch_norm", False))
        net = FCN(stride, config.in_channels, width, batch_norm,
                  extra_option(config, "activation", "relu"), config.presence_head,
                  config.mask_channels, config.presence_channels)
        _load_backbone_weights(net.encoder, config, width, batch_norm)
        return SegmentationNet(net, SIZE_MULTIPLE, config.presence_head)

    return build


for _stride in (32, 16, 8):
    register(f"fcn{_stride}s", options=("width", "batch_norm", "activation"),
             pretrained=True)(_builder(_stride))

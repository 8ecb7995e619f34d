"""Batch augmentation on the training device: one set of tensor ops per batch, no Python loop
over images or pixels. Geometric transforms move images and masks together.

Probabilities are per image. Seed 000's values, as an example:
``--hflip 0.5 --vflip 0.25 --brightness 0.1:0.1 --noise 0.03:0.1``.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nerveseg_cli.errors import NervesegError


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.0
    rotate: tuple[float, float] = (0.0, 0.0)  # (max degrees, probability)
    scale: tuple[float, float] = (0.0, 0.0)  # (max relative change, probability)
    brightness: tuple[float, float] = (0.0, 0.0)  # (max relative change, probability)
    noise: tuple[float, float] = (0.0, 0.0)  # (sigma on the [0, 1] scale, probability)

    @property
    def geometric(self) -> bool:
        return self.rotate[1] > 0 and self.rotate[0] > 0 or self.scale[1] > 0 and \
            self.scale[0] > 0


def parse_amount(text: str, name: str) -> tuple[float, float]:
    """``AMOUNT[:P]`` -> (amount, probability); P defaults to 1 when AMOUNT > 0."""
    parts = str(text).split(":")
    try:
        amount = float(parts[0])
        probability = float(parts[1]) if len(parts) > 1 else (1.0 if amount > 0 else 0.0)
    except (ValueError, IndexError):
        raise NervesegError(f"{name} {text!r} is not AMOUNT[:PROBABILITY]") from None
    if len(parts) > 2 or amount < 0 or not 0 <= probability <= 1:
        raise NervesegError(f"{name} {text!r}: need AMOUNT >= 0 and 0 <= PROBABILITY <= 1")
    return amount, probability


def resample_labels(labels: torch.Tensor, grid: torch.Tensor, classes: int) -> torch.Tensor:
    """Label maps (N, 1, H, W) of values below ``classes`` sampled at ``grid`` by the rule of
    ``Geometry.forward_labels``: each foreground class's indicator bilinearly, a pixel taking
    the class of the largest share if it beats the background's; two classes are the binary
    mask's rule. Every class is resampled, present or not: finding the present ones would wait
    for the GPU."""
    values = torch.arange(1, classes, device=labels.device, dtype=labels.dtype).view(1, -1, 1, 1)
    if values.numel() == 0:
        return torch.zeros_like(labels)
    shares = F.grid_sample((labels == values).to(grid.dtype), grid, mode="bilinear",
                           padding_mode="reflection", align_corners=False)
    best, index = shares.max(1, keepdim=True)
    chosen = (index + 1).to(labels.dtype)
    return torch.where(best > 1 - shares.sum(1, keepdim=True), chosen,
                       torch.zeros_like(chosen))


def augment_batch(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator,
                  classes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch (N, C, H, W) of images in [0, 1] and masks in [0, 1] (``classes`` > 0:
    label maps of class indices below it, which geometric transforms resample class by
    class).

    Random numbers come from ``generator``, which lives on the images' device: no random
    parameter is copied from the host, so the batch is augmented without waiting for the GPU.
    The training loop seeds it for each step from the run's seed, the process and the step,
    which makes a run reproducible and resumable at any step.
    """
    n = images.shape[0]
    device = images.device

    def draw(probability: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < probability

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=device)

    if config.hflip > 0:
        flip = draw(config.hflip).view(n, 1, 1, 1)
        images = torch.where(flip, images.flip(-1), images)
        masks = torch.where(flip, masks.flip(-1), masks)
    if config.vflip > 0:
        flip = draw(config.vflip).view(n, 1, 1, 1)
        images = torch.where(flip, images.flip(-2), images)
        masks = torch.where(flip, masks.flip(-2), masks)
    if config.geometric:
        max_deg, p_rot = config.rotate
        max_scale, p_scale = config.scale
        angle = uniform(-max_deg, max_deg) * draw(p_rot) * math.pi / 180
        zoom = 1 + uniform(-max_scale, max_scale) * draw(p_scale)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        height, width = images.shape[-2:]
        aspect = height / width  # rotate in pixel space, not in the normalised square
        theta = torch.stack([torch.stack([cos, -sin * aspect, torch.zeros_like(cos)], 1),
                             torch.stack([sin / aspect, cos, torch.zeros_like(cos)], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)
        if classes:
            masks = resample_labels(masks, grid, classes)
        else:
            masks = F.grid_sample(masks, grid.to(masks.dtype), mode="bilinear",
                                  padding_mode="reflection", align_corners=False)
            masks = (masks > 0.5).to(images.dtype)
    if config.brightness[1] > 0 and config.brightness[0] > 0:
        amount, probability = config.brightness
        factor = 1 + uniform(-amount, amount) * draw(probability)
        images = (images * factor.view(n, 1, 1, 1)).clamp(0, 1)
    if config.noise[1] > 0 and config.noise[0] > 0:
        sigma, probability = config.noise
        which = draw(probability).view(n, 1, 1, 1)
        noise = torch.randn(images.shape, generator=generator, device=device,
                            dtype=images.dtype)
        images = torch.where(which, (images + sigma * noise).clamp(0, 1), images)
    return images, masks

"""Input geometry: how an image becomes a network input, and how the output maps back exactly.

Shared by ``train`` (which chooses it and stores it in config.json) and ``predict``, with the
normalisation that follows it. torch is imported only by the torch engine's functions
(:meth:`Geometry.backward`, :func:`normalise_input`): the ONNX Runtime engine uses the numpy
twins (:meth:`Geometry.backward_array`, :func:`normalise_array`) and never loads torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from nerveseg_cli.errors import NervesegError

if TYPE_CHECKING:
    import torch

GEOMETRY_MODES = ("resize", "pad")
MAX_SIDE = 32768


@dataclass(frozen=True)
class Geometry:
    """How an image becomes a network input and how the output goes back.

    ``resize``: scale to (width, height). ``pad``: pad right and bottom to (width, height), a
    canvas of the network's size multiple, then crop the output.
    """

    mode: str  # "resize" or "pad"
    width: int
    height: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        """A stored geometry, checked (a run folder may come from anywhere)."""
        geometry = cls(str(data["mode"]), int(data["width"]), int(data["height"]))
        if geometry.mode not in GEOMETRY_MODES:
            raise ValueError(f"geometry mode {geometry.mode!r} is not one of "
                             f"{', '.join(GEOMETRY_MODES)}")
        if not (1 <= geometry.width <= MAX_SIDE and 1 <= geometry.height <= MAX_SIDE):
            raise ValueError(f"geometry {geometry.width}x{geometry.height} is not 1 to "
                             f"{MAX_SIDE} pixels a side")
        return geometry

    def forward(self, image: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """Bring one 2-D image to the network's input size."""
        h, w = image.shape
        if self.mode == "resize":
            if (w, h) == (self.width, self.height):
                return image
            return cv2.resize(image, (self.width, self.height), interpolation=interpolation)
        if w > self.width or h > self.height:
            raise NervesegError(f"image of {w}x{h} does not fit the {self.width}x{self.height} "
                                "padding canvas of this run")
        return cv2.copyMakeBorder(image, 0, self.height - h, 0, self.width - w,
                                  cv2.BORDER_REFLECT_101 if min(h, w) > 1 else
                                  cv2.BORDER_REPLICATE)

    def forward_mask(self, mask: np.ndarray) -> np.ndarray:
        if self.mode == "resize":
            resized = self.forward(mask.astype(np.uint8) * 255, cv2.INTER_LINEAR)
            return (resized > 127).astype(np.uint8)
        return self.forward(mask.astype(np.uint8), cv2.INTER_NEAREST)

    def forward_labels(self, labels: np.ndarray) -> np.ndarray:
        """A label map at the network's size, each class resampled as :meth:`forward_mask`
        resamples a binary mask (two classes give exactly its mask).

        Each present class's indicator is resized linearly; a pixel takes the foreground class
        of the largest share if that share beats the background's (what the classes leave), as
        a binary mask's pixel is set above one half. Nearest-neighbour resizing would shift the
        targets by (scale - 1) / 2 source pixels against the area-resized image and alias
        their outlines, which a binary model's targets never were.
        """
        labels = labels.astype(np.uint8)
        if self.mode != "resize" or labels.shape == (self.height, self.width):
            return self.forward(labels, cv2.INTER_NEAREST)
        best = np.zeros((self.height, self.width), np.int16)
        best_class = np.zeros((self.height, self.width), np.uint8)
        total = np.zeros((self.height, self.width), np.int16)
        for value in np.flatnonzero(np.bincount(labels.ravel())[1:]) + 1:
            share = self.forward((labels == value).astype(np.uint8) * 255,
                                 cv2.INTER_LINEAR).astype(np.int16)
            larger = share > best
            best[larger], best_class[larger] = share[larger], value
            total += share
        return np.where(best > 255 - total, best_class, 0).astype(np.uint8)

    def backward(self, probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map (N, 1, H', W') network-size probabilities back to an original height x width."""
        import torch

        if self.mode == "resize":
            if probs.shape[-2:] == (height, width):
                return probs
            return torch.nn.functional.interpolate(probs, size=(height, width), mode="bilinear",
                                                   align_corners=False)
        return probs[..., :height, :width]

    def backward_array(self, probs: np.ndarray, height: int, width: int) -> np.ndarray:
        """:meth:`backward` on a (C, H', W') float32 array: bilinear resampling (OpenCV's,
        which matches torch's ``align_corners=False`` to ~1e-5) or the crop."""
        if self.mode == "resize":
            if probs.shape[-2:] == (height, width):
                return probs
            return np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)
                             for plane in probs])
        return probs[..., :height, :width]


def normalise_input(images: torch.Tensor, mean: float, std: float, in_channels: int,
                    channels_last: bool = False) -> torch.Tensor:
    """A network input from (N, 1, H, W) images on the [0, 1] scale: standardised with the
    run's mean and std, the gray channel repeated for ``in_channels`` > 1."""
    import torch

    x = (images - mean) / std
    if in_channels > 1:
        x = x.expand(-1, in_channels, -1, -1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def normalise_array(images: np.ndarray, mean: float, std: float, in_channels: int
                    ) -> np.ndarray:
    """:func:`normalise_input` for (N, H, W) uint8 images in numpy: (N, C, H, W) float32,
    ``(value / 255 - mean) / std``, computed in float32 as the torch engine does."""
    x = images.astype(np.float32)[:, None] / np.float32(255)
    x = (x - np.float32(mean)) / np.float32(std)
    if in_channels > 1:
        x = np.repeat(x, in_channels, axis=1)
    return np.ascontiguousarray(x)

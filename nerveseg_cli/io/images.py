"""Decoding images and masks: the pixel rules of docs/formats.md, in one place.

* Images are read with OpenCV as 2-D ``uint8`` arrays. 16-bit images are mapped to 8 bits by
  dividing by 257 (0 -> 0, 65535 -> 255); float images in [0, 1] are scaled by 255, other float
  images clipped to [0, 255]; colour images are converted to grayscale with OpenCV's luma weights
  (alpha dropped).
* A mask pixel is foreground when its value exceeds half its type's range (> 127 for 8-bit,
  > 32767 for 16-bit); a colour mask is foreground where any channel is. ``label=N`` instead
  selects the pixels equal to N, read before any conversion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.io.parallel import thread_map

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``580x420``) into ``(width, height)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise NervesegError(f"size {text!r} is not WxH with positive integers, e.g. 580x420")
    return int(match.group(1)), int(match.group(2))


def read_raw(path: Path) -> np.ndarray:
    """The array OpenCV decodes from ``path``, unconverted."""
    if not path.is_file():
        raise NervesegError(f"{path}: no such file")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise NervesegError(f"{path}: not a readable image (png, tif, jpg or bmp)")
    return data


def to_uint8_gray(data: np.ndarray) -> np.ndarray:
    """Convert any array OpenCV can return to 2-D uint8 grayscale (see the module docstring)."""
    if data.ndim == 3:
        if data.shape[2] == 1:
            data = data[:, :, 0]
        else:
            code = cv2.COLOR_BGRA2GRAY if data.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            data = cv2.cvtColor(data, code)
    if data.dtype == np.uint8:
        return np.ascontiguousarray(data)
    if data.dtype == np.uint16:
        return ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(data, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(data) * scale + 0.5, 0, 255).astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as a 2-D uint8 grayscale array."""
    return to_uint8_gray(read_raw(Path(path)))


def mask_from_array(data: np.ndarray, label: int | None = None) -> np.ndarray:
    """The foreground of a decoded mask (the mask rule of the module docstring)."""
    if label is not None:
        if data.ndim == 3:
            data = data[:, :, 0] if data.shape[2] == 1 else data[:, :, :3].max(axis=2)
        return data == label
    if np.issubdtype(data.dtype, np.integer):
        half = np.iinfo(data.dtype).max // 2
    else:
        half = 0.5 if float(np.nanmax(data, initial=0.0)) <= 1.0 else 127.0
    fg = data > half
    if fg.ndim == 3:
        fg = fg[:, :, : min(3, fg.shape[2])].any(axis=2)
    return fg


class MaskReader:
    """Reads the masks of one set by one rule, and notices a set that is probably a label map.

    Without a label, a set whose non-zero values never exceed half range reads as all empty,
    which is almost always a label map (0/1/2...) read without ``--label``: ``finish`` warns
    then. ``read`` may run in several threads at once: the flags only ever turn True.
    """

    def __init__(self, label: int | None = None, source: str = "masks") -> None:
        self.label = label
        self.source = source
        self.any_nonzero = False
        self.any_foreground = False

    def read(self, path: str | Path) -> np.ndarray:
        """The mask in ``path`` as a 2-D bool array."""
        raw = read_raw(Path(path))
        mask = mask_from_array(raw, self.label)
        self.note(raw, mask)
        return mask

    def note(self, raw: np.ndarray, foreground: np.ndarray) -> None:
        """Record one decoded map and its foreground (for maps read by other means)."""
        if self.label is not None:
            return
        if not self.any_foreground and foreground.any():
            self.any_foreground = True
        if not self.any_nonzero and np.any(raw):
            self.any_nonzero = True

    def finish(self) -> None:
        """Warn once if every mask read as empty although some held non-zero values."""
        if self.any_nonzero and not self.any_foreground:
            warn(f"{self.source}: values never exceed half their range, so every mask reads "
                 "as empty; for a label map (0/1/2...) pass --label N")

    def areas(self, paths: Sequence[Path | None], workers: int = 4,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Foreground pixel count of each mask (-1 where the path is None), reading in threads
        without keeping the masks; warns as ``finish`` does."""

        def area(path: Path | None) -> int:
            result = -1 if path is None else int(np.count_nonzero(self.read(path)))
            if progress:
                progress(1)
            return result

        counts = np.fromiter(thread_map(area, paths, workers), dtype=np.int64, count=len(paths))
        self.finish()
        return counts


def read_mask(path: str | Path, label: int | None = None) -> np.ndarray:
    """Read one mask as a 2-D bool array (the mask rule of the module docstring)."""
    return MaskReader(label).read(path)


def encode_image(array: np.ndarray, suffix: str = ".png") -> bytes:
    """The bytes of ``array`` in the format of ``suffix`` (TIFFs LZW-compressed)."""
    params: list[int] = []
    if suffix in (".tif", ".tiff"):
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW, as the Kaggle files are
    ok, buffer = cv2.imencode(suffix, array, params)
    if not ok:
        raise NervesegError(f"could not encode a {array.shape} {array.dtype} array as {suffix}")
    return buffer.tobytes()

"""Decoding images and masks: the pixel rules of docs/formats.md, in one place.

* Images are read with OpenCV as 2-D ``uint8`` arrays. 16-bit images are mapped to 8 bits by
  dividing by 257 (0 -> 0, 65535 -> 255); float images in [0, 1] are scaled by 255, other float
  images clipped to [0, 255]; colour images are converted to grayscale with OpenCV's luma weights
  (alpha dropped).
* A mask pixel is foreground when its value exceeds half its type's range (> 127 for 8-bit,
  > 32767 for 16-bit); a colour mask is foreground where any channel is. A palette PNG is read
  as its class indices (LabelMe, CVAT and VOC tools export label maps so). ``label=N`` instead
  selects the pixels equal to N, read before any conversion; :class:`MaskReader` holds the
  rules for label maps.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from nerveseg_cli.errors import NervesegError, brief, require_file, warn

# OpenCV prints codec errors ("[ERROR] ... TIFF_Error ...") itself; nerveseg reports an
# unreadable file as one error line of its own instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# The largest image a size option may name: a mask of it is 100 MB in memory, per worker
# thread (rle-decode, score and rle-encode decode Kaggle CSVs at --size).
MAX_PIXELS = 10**8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE = 3  # the PNG colour type of palette (indexed) images


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``580x420``) into ``(width, height)``, at most MAX_PIXELS."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*[xX]\s*(\d{1,9})\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise NervesegError(f"{option} {text!r} is not WxH with positive integers, e.g. "
                            "580x420")
    width, height = int(match.group(1)), int(match.group(2))
    if width * height > MAX_PIXELS:
        raise NervesegError(f"{option} {text}: {width * height:,} pixels is more than the "
                            f"{MAX_PIXELS:,} nerveseg accepts (one such mask takes 100 MB of "
                            "memory per worker)")
    return width, height


def read_raw(path: Path) -> np.ndarray:
    """The array OpenCV decodes from ``path``, unconverted."""
    require_file(path, "an image file")
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


def png_colour_type(path: Path) -> int | None:
    """The colour type in a PNG's header (3 = palette), or None for a file that is not a PNG."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(26)
    except OSError:
        return None
    if len(header) < 26 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return header[25]


def read_mask_array(path: Path) -> np.ndarray:
    """A mask file's values: a palette PNG's class indices (Pillow; OpenCV would return the
    palette's colours), else what OpenCV decodes."""
    if png_colour_type(path) == PNG_PALETTE:
        from PIL import Image

        try:
            with Image.open(path) as image:
                if image.mode == "P":
                    return np.asarray(image)
        except (OSError, ValueError) as exc:
            raise NervesegError(f"{path}: not a readable palette PNG ({brief(exc)})") from None
    return read_raw(path)


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


def distinct_values(data: np.ndarray) -> list[int]:
    """The values present in an integer map, ascending (a colour map: its packed colours)."""
    if data.ndim == 3:
        channels = data[:, :, : min(3, data.shape[2])].astype(np.int64)
        packed = sum(channels[:, :, c] << (16 * c) for c in range(channels.shape[2]))
        return np.unique(packed).tolist()
    if data.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(data.ravel())).tolist()
    return np.unique(data).astype(np.int64).tolist()


def format_values(values: Iterable[int], most: int = 12) -> str:
    ordered = sorted(values)
    text = ", ".join(map(str, ordered[:most]))
    return text + (f" ... ({len(ordered)} values)" if len(ordered) > most else "")


class MaskReader:
    """Reads the masks of one set by one rule (docs/formats.md, "How pixels are read"), the
    one reader every command uses.

    Without a label: a palette PNG is foreground where its index is not 0; any mask that is a
    label map of several classes (a palette with two or more non-zero indices, small integer
    values 0/1/2..., or several colours) is an error suggesting ``--label``; and a set whose
    non-zero values never exceed half range reads as all empty, which ``finish`` warns about.
    With ``label=N``: foreground = value N (a palette's index N), and ``finish`` refuses a set
    where no pixel equals N, listing the values seen. ``read`` may run in several threads.
    """

    def __init__(self, label: int | None = None, source: str = "masks") -> None:
        self.label = label
        self.source = source
        self.any_nonzero = False
        self.any_foreground = False
        self.read_any = False
        self.values_seen: set[int] = set()
        self._lock = threading.Lock()

    def read(self, path: str | Path) -> np.ndarray:
        """The mask in ``path`` as a 2-D bool array."""
        path = Path(path)
        raw = read_mask_array(path)
        if self.label is not None:
            mask = mask_from_array(raw, self.label)
            self._note_label(raw, mask)
            return mask
        if png_colour_type(path) == PNG_PALETTE and raw.ndim == 2:
            self._refuse_label_map(path, raw, distinct_values(raw))
            mask = raw != 0
        else:
            self._refuse_label_map(path, raw, None)
            mask = mask_from_array(raw, None)
        self.note(raw, mask)
        return mask

    def _refuse_label_map(self, path: Path, raw: np.ndarray, values: list[int] | None) -> None:
        """A map of several classes has no single foreground: say so, with its values."""
        if values is None:
            if not np.issubdtype(raw.dtype, np.integer):
                return
            if raw.ndim == 2 and int(raw.max(initial=0)) > np.iinfo(raw.dtype).max // 2:
                return  # values above half range: the usual 0/255 (or lossy) mask
            values = distinct_values(raw)
        classes = [v for v in values if v != 0]
        if len(classes) < 2:
            return
        what = "colours" if raw.ndim == 3 else "values"
        raise NervesegError(f"{path}: a label map of several classes ({what} "
                            f"{format_values(values)}); {LABEL_OR_CLASSES} (docs/formats.md)")

    def _note_label(self, raw: np.ndarray, mask: np.ndarray) -> None:
        self.read_any = True
        if self.any_foreground:
            return
        if mask.any():
            self.any_foreground = True
            return
        values = distinct_values(raw if raw.ndim == 2 else raw.max(axis=2))
        with self._lock:
            self.values_seen.update(values)

    def note(self, raw: np.ndarray, foreground: np.ndarray) -> None:
        """Record one decoded map and its foreground (for maps read by other means)."""
        if self.label is not None:
            return
        if not self.any_foreground and foreground.any():
            self.any_foreground = True
        if not self.any_nonzero and np.any(raw):
            self.any_nonzero = True

    def finish(self) -> None:
        """After the set: refuse a label no pixel has; warn if every mask read as empty
        although some held non-zero values."""
        if self.label is not None:
            if self.read_any and not self.any_foreground:
                raise NervesegError(f"{self.source}: no pixel of any mask equals --label "
                                    f"{self.label} (values seen: "
                                    f"{format_values(self.values_seen)})")
            return
        if self.any_nonzero and not self.any_foreground:
            warn(f"{self.source}: values never exceed half their range, so every mask reads "
                 f"as empty; for a label map (0/1/2...) {LABEL_OR_CLASSES}")


# What a reader of binary masks tells a label map's user: every command that reads masks takes
# both options (docs/formats.md, "Label maps" and "Classes").
LABEL_OR_CLASSES = ("pass --label N to take class N as the foreground, or --classes (names, "
                    "background first, or their count) to keep every class")


class LabelMapReader:
    """Reads label maps of a multi-class task: each pixel's value is its class index, 0 to
    ``classes - 1`` (a palette PNG's indices; an 8- or 16-bit grayscale PNG or TIFF's values).
    A value beyond the class list, or a colour mask, is an error naming the file."""

    def __init__(self, classes: int, source: str = "masks") -> None:
        self.classes = classes
        self.source = source

    def finish(self) -> None:
        """Nothing to check across a set of label maps (each is checked as it is read)."""

    def read(self, path: str | Path) -> np.ndarray:
        """The label map in ``path`` as a 2-D uint8 array of class indices."""
        path = Path(path)
        raw = read_mask_array(path)
        if raw.ndim == 3 and raw.shape[2] > 1:
            colour = raw[:, :, :3]
            if np.any(colour != colour[:, :, :1]):
                raise NervesegError(f"{path}: a colour mask; a label map holds class indices "
                                    "(a palette PNG, or 8-bit gray values 0, 1, 2 ...)")
            raw = colour[:, :, 0]
        elif raw.ndim == 3:
            raw = raw[:, :, 0]
        if not np.issubdtype(raw.dtype, np.integer):
            raise NervesegError(f"{path}: {raw.dtype} values; a label map holds integer "
                                "class indices")
        top = int(raw.max(initial=0))
        if top >= self.classes:
            values = format_values(distinct_values(raw))
            raise NervesegError(f"{path}: label values {values} go beyond the {self.classes} "
                                f"classes (0 to {self.classes - 1}); check --classes")
        return raw.astype(np.uint8, copy=False)


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

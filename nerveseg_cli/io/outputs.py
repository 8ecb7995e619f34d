"""Writing outputs: atomic files, and the checks on output folders and files.

Every file is written to a temporary file beside its target and renamed over it only when
complete, so an interrupted command never leaves a truncated file (docs/formats.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.images import encode_image

# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path`` and rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Atomically write an image; the format follows the suffix (png, tif, ...)."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(array, path.suffix.lower()))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as a single-channel 0/255 image."""
    write_image(path, mask.astype(np.uint8) * 255)


def check_output_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse an output folder that is a file, or non-empty unless overwriting or resuming."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NervesegError(f"{path}: output exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise NervesegError(f"{path}: output folder is not empty (pass --overwrite to write "
                            "into it)")
    return path


def prepare_output_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Check an output folder (see check_output_dir) and create it."""
    path = check_output_dir(path, overwrite, resume)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse an output file that is a folder, or exists unless overwriting."""
    path = Path(path)
    if path.is_dir():
        raise NervesegError(f"{path}: output is a folder, expected a file name")
    if path.exists() and not overwrite:
        raise NervesegError(f"{path}: output file exists (pass --overwrite to replace it)")
    return path

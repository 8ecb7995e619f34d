"""Image and mask I/O, dataset discovery, manifests and atomic writes: the one place for them.

Conventions (DESIGN.md, docs/formats.md):

* Images are read with OpenCV as 2-D ``uint8`` arrays. 16-bit images are mapped to 8 bits by
  dividing by 257 (0 -> 0, 65535 -> 255); float images in [0, 1] are scaled by 255, other float
  images clipped to [0, 255]; colour images are converted to grayscale with OpenCV's luma weights
  (alpha dropped).
* A mask pixel is foreground when its value exceeds half its type's range (> 127 for 8-bit,
  > 32767 for 16-bit); a colour mask is foreground where any channel is. ``label=N`` instead
  selects the pixels equal to N, read before any conversion.
* Probability maps are single-channel 8-bit PNGs, value = round(255 * p).
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import cv2
import numpy as np

from nerveseg_cli.errors import NervesegError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_SUFFIX = "_mask"
MANIFEST_COLUMNS = ("id", "image", "mask", "subject", "has_mask")
# An id becomes a file name, so it may not hold path separators or start with a dot.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KAGGLE_ID = re.compile(r"^(\d+)_(\d+)$")

# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

T = TypeVar("T")
R = TypeVar("R")


class NervesegWarning(UserWarning):
    """Something the user should know about, that does not stop the command."""


def warn(message: str) -> None:
    warnings.warn(message, NervesegWarning, stacklevel=2)


# --------------------------------------------------------------------------------------------
# ids, subjects, sizes


def validate_id(sample_id: str, where: str) -> str:
    """Return ``sample_id`` if it is safe to use as a file stem, else raise naming ``where``."""
    if not _ID_PATTERN.match(sample_id) or ".." in sample_id:
        raise NervesegError(
            f"{where}: id {sample_id!r} is not a safe file name "
            "(letters, digits, '_', '.', '-' only, not starting with '.')"
        )
    return sample_id


def subject_of(sample_id: str, subject_regex: str | None = None) -> str:
    """Kaggle ``SUBJECT_N`` ids give ``SUBJECT``; else the regex's first group; else the id."""
    if subject_regex:
        match = re.search(subject_regex, sample_id)
        if match and match.groups():
            return match.group(1)
        return sample_id
    match = _KAGGLE_ID.match(sample_id)
    return match.group(1) if match else sample_id


def id_sort_key(sample_id: str) -> tuple:
    """Numeric order for ids such as ``2_10`` or ``17``; non-numeric parts sort after numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"[_.-]", sample_id))


def sort_ids(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=id_sort_key)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``580x420``) into ``(width, height)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise NervesegError(f"size {text!r} is not WxH with positive integers, e.g. 580x420")
    return int(match.group(1)), int(match.group(2))


def threshold_level(threshold: float) -> int:
    """The 8-bit level L such that a map value v is foreground exactly when v > L.

    Foreground means v / 255 > threshold; the epsilon keeps 0.6 * 255 (= 152.99999...) at 153.
    """
    if not 0.0 <= threshold <= 1.0:
        raise NervesegError(f"threshold {threshold} is outside [0, 1]")
    return int(np.floor(threshold * 255 + 1e-9))


# --------------------------------------------------------------------------------------------
# reading


def read_raw(path: Path) -> np.ndarray:
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


def read_mask(path: str | Path, label: int | None = None) -> np.ndarray:
    """Read a mask as a 2-D bool array (foreground rule in the module docstring)."""
    return mask_from_array(read_raw(Path(path)), label)


def mask_from_array(data: np.ndarray, label: int | None = None) -> np.ndarray:
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


class MaskSetChecker:
    """Notices a mask set whose non-zero values never exceed half range (likely a label map)."""

    def __init__(self) -> None:
        self.any_nonzero = False
        self.any_foreground = False

    def update(self, raw: np.ndarray, foreground: np.ndarray) -> None:
        if not self.any_foreground:
            self.any_foreground = bool(foreground.any())
            if not self.any_nonzero:
                self.any_nonzero = bool(np.any(raw))

    def finish(self, source: str) -> None:
        if self.any_nonzero and not self.any_foreground:
            warn(f"{source}: values never exceed half their range, so every mask reads as "
                 "empty; for a label map (0/1/2...) pass --label N")


def read_masks(paths: Sequence[Path], label: int | None = None, workers: int = 4,
               source: str = "masks") -> list[np.ndarray]:
    """Read many masks in parallel threads and warn once if they look like a label map."""
    checker = MaskSetChecker()

    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(path)
        return raw, mask_from_array(raw, label)

    masks = []
    for raw, fg in thread_map(load, paths, workers):
        if label is None:
            checker.update(raw, fg)
        masks.append(fg)
    if label is None:
        checker.finish(source)
    return masks


def read_mask_areas(paths: Sequence[Path | None], label: int | None = None, workers: int = 4,
                    source: str = "masks",
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Foreground pixel count of each mask (-1 where the path is None), without keeping masks.

    Reads in parallel threads and warns once if the set looks like a label map, as read_masks.
    """
    checker = MaskSetChecker()

    def area(path: Path | None) -> int:
        if path is None:
            result = -1
        else:
            raw = read_raw(path)
            foreground = mask_from_array(raw, label)
            if label is None:
                checker.update(raw, foreground)  # only ever sets flags to True: thread-safe
            result = int(np.count_nonzero(foreground))
        if progress:
            progress(1)
        return result

    areas = np.fromiter(thread_map(area, paths, workers), dtype=np.int64, count=len(paths))
    if label is None:
        checker.finish(source)
    return areas


def thread_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 4) -> Iterator[R]:
    """Ordered map over threads; OpenCV's codecs release the GIL, so this overlaps decoding."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


# --------------------------------------------------------------------------------------------
# atomic writing


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
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


def encode_image(array: np.ndarray, suffix: str = ".png") -> bytes:
    params: list[int] = []
    if suffix in (".tif", ".tiff"):
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW, as the Kaggle files are
    ok, buffer = cv2.imencode(suffix, array, params)
    if not ok:
        raise NervesegError(f"could not encode a {array.shape} {array.dtype} array as {suffix}")
    return buffer.tobytes()


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
    path = Path(path)
    if path.is_dir():
        raise NervesegError(f"{path}: output is a folder, expected a file name")
    if path.exists() and not overwrite:
        raise NervesegError(f"{path}: output file exists (pass --overwrite to replace it)")
    return path


# --------------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class Sample:
    """One image of a set: its id, image and mask files (either may be missing), subject."""

    id: str
    image: Path | None
    mask: Path | None
    subject: str
    has_mask: bool | None = None  # whether the mask is non-empty; None when not yet known


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _by_stem(files: Iterable[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in files:
        stem = file.stem
        if stem in found:
            raise NervesegError(f"{folder}: two files share the id {stem!r}: "
                                f"{found[stem].name} and {file.name}")
        found[stem] = file
    return found


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and read_csv_header(path)[:2] == ["id", "image"]


def discover_images(path: str | Path, subject_regex: str | None = None) -> list[Sample]:
    """List an image set in any of DESIGN.md's three forms, sorted by numeric id.

    1. a Kaggle folder: images with ``ID_mask.ext`` masks beside them (or none, for test);
    2. a generic folder with ``images/`` and optional ``masks/``, matched by stem;
    3. a manifest CSV.
    """
    path = Path(path)
    if path.is_file():
        if not is_manifest(path):
            raise NervesegError(f"{path}: not a manifest CSV (header must start with id,image)")
        return read_manifest(path)
    if not path.is_dir():
        raise NervesegError(f"{path}: no such file or folder")
    if (path / "images").is_dir():
        images = _by_stem(_image_files(path / "images"), path / "images")
        masks = (_by_stem(_image_files(path / "masks"), path / "masks")
                 if (path / "masks").is_dir() else {})
        orphans = sorted(set(masks) - set(images), key=id_sort_key)
        if orphans:
            warn(f"{path / 'masks'}: {len(orphans)} masks have no image (first: {orphans[0]})")
    else:
        files = _image_files(path)
        masks = _by_stem((f for f in files if f.stem.endswith(MASK_SUFFIX)), path)
        masks = {stem[: -len(MASK_SUFFIX)]: file for stem, file in masks.items()}
        images = _by_stem((f for f in files if not f.stem.endswith(MASK_SUFFIX)), path)
    if not images:
        raise NervesegError(f"{path}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return [Sample(i, images[i], masks.get(i), subject_of(i, subject_regex))
            for i in sort_ids(images)]


def discover_maps(path: str | Path) -> dict[str, Path]:
    """Map id -> file for a folder of per-image maps (masks or probability PNGs).

    Accepts a flat folder of ``ID.ext`` files (what ``rle-decode`` and ``predict`` write), a
    Kaggle folder (its ``ID_mask`` files) or a generic folder (its ``masks/``).
    """
    path = Path(path)
    if not path.is_dir():
        raise NervesegError(f"{path}: no such folder")
    if (path / "images").is_dir() or (path / "masks").is_dir() or any(
        f.stem.endswith(MASK_SUFFIX) for f in _image_files(path)
    ):
        found = {s.id: s.mask for s in discover_images(path) if s.mask is not None}
    else:
        found = _by_stem(_image_files(path), path)
    if not found:
        raise NervesegError(f"{path}: no masks or maps found")
    return {i: found[i] for i in sort_ids(found)}


# --------------------------------------------------------------------------------------------
# CSV and manifests


def read_csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [c.strip() for c in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise NervesegError(f"{path}: cannot read CSV ({exc})") from exc


def read_csv_rows(path: str | Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Return the header and an iterator of (line number, row) for the data rows."""
    path = Path(path)
    if not path.is_file():
        raise NervesegError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NervesegError(f"{path}: cannot read CSV ({exc})") from exc
    reader = csv.reader(io.StringIO(text))
    header = [c.strip() for c in next(reader, [])]
    if not header:
        raise NervesegError(f"{path}: empty CSV, expected a header row")

    def rows() -> Iterator[tuple[int, list[str]]]:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row

    return header, rows()


def _manifest_path(value: str, base: Path) -> Path | None:
    if not value:
        return None
    candidate = Path(value)
    return candidate if candidate.is_absolute() else base / candidate


def read_manifest(path: str | Path) -> list[Sample]:
    """Read a manifest CSV into samples (paths resolved against the CSV's folder)."""
    return read_manifest_columns(path)[0]


def read_manifest_columns(path: str | Path) -> tuple[list[Sample], dict[str, list[str]]]:
    """Read a manifest and its optional columns (``fold``, ``dup_group`` ...), by name.

    The optional columns keep the file's order and hold the stripped cell text, one entry per
    sample.
    """
    path = Path(path)
    header, rows = read_csv_rows(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise NervesegError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    col = {name: header.index(name) for name in MANIFEST_COLUMNS}
    extra_col = {name: index for index, name in enumerate(header)
                 if name not in MANIFEST_COLUMNS and name}
    extra: dict[str, list[str]] = {name: [] for name in extra_col}
    samples: list[Sample] = []
    seen: set[str] = set()
    for line, row in rows:
        row = row + [""] * (len(header) - len(row))
        for name, index in extra_col.items():
            extra[name].append(row[index].strip())
        sample_id = validate_id(row[col["id"]].strip(), f"{path}, line {line}")
        if sample_id in seen:
            raise NervesegError(f"{path}, line {line}: duplicate id {sample_id!r}")
        seen.add(sample_id)
        image = _manifest_path(row[col["image"]].strip(), path.parent)
        mask = _manifest_path(row[col["mask"]].strip(), path.parent)
        flag = row[col["has_mask"]].strip()
        if flag not in ("", "0", "1"):
            raise NervesegError(f"{path}, line {line}: has_mask must be 0, 1 or empty, "
                                f"not {flag!r}")
        samples.append(Sample(sample_id, image, mask, row[col["subject"]].strip() or sample_id,
                              None if flag == "" else flag == "1"))
    if not samples:
        raise NervesegError(f"{path}: manifest has no rows")
    return samples, extra


def discover_with_columns(path: str | Path, subject_regex: str | None = None
                          ) -> tuple[list[Sample], dict[str, list[str]]]:
    """``discover_images``, plus a manifest's optional columns (none for a folder)."""
    path = Path(path)
    if path.is_file() and is_manifest(path):
        return read_manifest_columns(path)
    return discover_images(path, subject_regex), {}


def check_sample_files(samples: Sequence[Sample], source: str | Path) -> None:
    """Raise naming the first sample whose image or mask file does not exist."""
    for sample in samples:
        for kind, file in (("image", sample.image), ("mask", sample.mask)):
            if file is not None and not file.is_file():
                raise NervesegError(f"{source}: {kind} of {sample.id} not found: {file}")
        if sample.image is None:
            raise NervesegError(f"{source}: {sample.id} has no image")


def write_manifest(path: str | Path, samples: Sequence[Sample],
                   extra: dict[str, Sequence] | None = None) -> None:
    """Atomically write a manifest; paths are written relative to the CSV's folder if possible."""
    path = Path(path)
    base = path.parent.resolve()
    extra = extra or {}

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        resolved = p.resolve()
        try:
            return resolved.relative_to(base).as_posix()
        except ValueError:
            return os.path.relpath(resolved, base) if resolved.anchor == base.anchor \
                else str(resolved)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*MANIFEST_COLUMNS, *extra])
    for index, sample in enumerate(samples):
        writer.writerow([sample.id, rel(sample.image), rel(sample.mask), sample.subject,
                         "" if sample.has_mask is None else int(sample.has_mask),
                         *(values[index] for values in extra.values())])
    atomic_write_text(path, buffer.getvalue())

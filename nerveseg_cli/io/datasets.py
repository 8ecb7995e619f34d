"""Image sets: ids and subjects, the three forms of a set (docs/formats.md), CSV files and
manifests."""

from __future__ import annotations

import csv
import functools
import io
import os
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerveseg_cli.errors import NervesegError, brief, require_file, require_folder, warn
from nerveseg_cli.io.images import IMAGE_SUFFIXES, LabelMapReader, MaskReader, read_image
from nerveseg_cli.io.outputs import atomic_write_text
from nerveseg_cli.io.parallel import thread_map

MASK_SUFFIX = "_mask"
MANIFEST_COLUMNS = ("id", "image", "mask", "subject", "has_mask")
# An id becomes a file name, so it may not hold path separators or start with a dot.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KAGGLE_ID = re.compile(r"^(\d+)_(\d+)$")
MAX_ID_LENGTH = 200


# --------------------------------------------------------------------------------------------
# ids and subjects


def validate_id(sample_id: str, where: str) -> str:
    """Return ``sample_id`` if it is safe to use as a file stem, else raise naming ``where``.

    Every id goes through here, from a CSV or from a file name: ids become file names (and
    CSV fields), so they hold no separator, quote, comma, space or newline, and leave room
    for the longest name made of them (``RANK_ID.png``, ``ID_mask.png``) on any file system.
    """
    if not _ID_PATTERN.match(sample_id) or ".." in sample_id:
        shown = sample_id if len(sample_id) <= 60 else sample_id[:60] + "..."
        raise NervesegError(
            f"{where}: id {shown!r} is not a safe file name "
            "(letters, digits, '_', '.', '-' only, not starting with '.')"
        )
    if len(sample_id) > MAX_ID_LENGTH:
        raise NervesegError(f"{where}: id {sample_id[:40]!r}... has {len(sample_id)} "
                            f"characters; at most {MAX_ID_LENGTH} (file names are limited to "
                            "255 bytes)")
    return sample_id


class IdRegister:
    """The ids of one input, each once: a repeat is an error naming where the id came first.
    An id names the files made from it, so an id that differs from an earlier one only in case
    (``A1`` after ``a1``) is refused too: on a case-insensitive file system (macOS's and
    Windows' defaults) both would write one file, the second over the first."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, Hashable], str] = {}  # (id, also) -> where it came first
        self._spelling: dict[str, tuple[str, str]] = {}  # folded id -> (the id, where first)

    def add(self, sample_id: str, where: str, first: str, *, also: Hashable = None,
            label: str = "") -> str:
        """Record ``sample_id`` (with ``also``, e.g. its class, where an input may repeat an
        id with another one), seen ``first`` (``on line 3``, ``in 1_1.tif``), else raise an
        error at ``where``; ``label`` shows ``also`` in the message."""
        earlier = self._first.get((sample_id, also))
        if earlier is not None:
            raise NervesegError(f"{where}: duplicate id {sample_id!r}{label} (first {earlier})")
        spelled, spelled_first = self._spelling.setdefault(sample_id.casefold(),
                                                           (sample_id, first))
        if spelled != sample_id:
            raise NervesegError(f"{where}: id {sample_id!r} differs from {spelled!r} (first "
                                f"{spelled_first}) only in case: the files named after them "
                                "would be one on a case-insensitive file system")
        self._first[(sample_id, also)] = first
        return sample_id


@functools.lru_cache(maxsize=16)
def compile_subject_regex(text: str) -> re.Pattern:
    """``--subject-regex``: a valid regex with a group (the subject), else a one-line error."""
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise NervesegError(f"--subject-regex {text!r} is not a valid regex "
                            f"({brief(exc)})") from None
    if pattern.groups < 1:
        raise NervesegError(f"--subject-regex {text!r} has no group; its first group is the "
                            "subject, e.g. '^(\\w+?)_' or '^(p[0-9]+)-'")
    return pattern


def subject_of(sample_id: str, subject_regex: str | None = None) -> str:
    """Kaggle ``SUBJECT_N`` ids give ``SUBJECT``; else the regex's first group; else the id."""
    if subject_regex:
        match = compile_subject_regex(subject_regex).search(sample_id)
        if match and match.group(1):
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
    origin: str = ""  # "MANIFEST, line N" for a manifest row, to name it in errors
    frame: int | None = None  # a video's frame (0-based): ``image`` is then the video file


@contextmanager
def naming(sample: Sample) -> Iterator[None]:
    """Errors reading a manifest row's files name the manifest, the line and the id."""
    try:
        yield
    except NervesegError as exc:
        if not sample.origin:
            raise
        raise NervesegError(f"{sample.origin} (id {sample.id}): {exc}") from None


def load_image(sample: Sample) -> np.ndarray:
    """A sample's image as 2-D uint8 (errors name its manifest row)."""
    if sample.image is None:
        raise NervesegError(f"{sample.origin or sample.id}: {sample.id} has no image")
    if sample.frame is not None:
        from nerveseg_cli.io.video import read_frame

        return read_frame(sample.image, sample.frame)
    with naming(sample):
        return read_image(sample.image)


def load_label_map(sample: Sample, reader: LabelMapReader) -> np.ndarray:
    """A sample's label map (class indices; errors name its manifest row)."""
    if sample.mask is None:
        raise NervesegError(f"{sample.origin or sample.id}: {sample.id} has no mask")
    with naming(sample):
        return reader.read(sample.mask)


def load_mask(sample: Sample, reader: MaskReader) -> np.ndarray:
    """A sample's mask by ``reader``'s rule (errors name its manifest row)."""
    if sample.mask is None:
        raise NervesegError(f"{sample.origin or sample.id}: {sample.id} has no mask")
    with naming(sample):
        return reader.read(sample.mask)


def mask_areas(samples: Sequence[Sample], reader: MaskReader, workers: int = 4,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Foreground pixel count of each sample's mask (-1 without one), read in threads without
    keeping the masks; then ``reader.finish()``."""

    def area(sample: Sample) -> int:
        result = -1 if sample.mask is None else int(np.count_nonzero(load_mask(sample, reader)))
        if progress:
            progress(1)
        return result

    counts = np.fromiter(thread_map(area, samples, workers), dtype=np.int64,
                         count=len(samples))
    reader.finish()
    return counts


def label_areas(samples: Sequence[Sample], reader: LabelMapReader, workers: int = 4,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(K, N): each foreground class's pixels in each sample's label map (-1 without one)."""

    def areas(sample: Sample) -> np.ndarray:
        if sample.mask is None:
            result = np.full(reader.classes - 1, -1, dtype=np.int64)
        else:
            labels = load_label_map(sample, reader)
            result = np.bincount(labels.ravel(), minlength=reader.classes)[1:].astype(np.int64)
        if progress:
            progress(1)
        return result

    rows = list(thread_map(areas, samples, workers))
    return np.stack(rows, axis=1) if rows else np.zeros((reader.classes - 1, 0), np.int64)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _by_stem(files: Iterable[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    ids = IdRegister()
    for file in files:
        stem = ids.add(validate_id(file.stem, str(file)), str(file), f"in {file.name}")
        found[stem] = file
    return found


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and read_csv_header(path)[:2] == ["id", "image"]


def discover_images(path: str | Path, subject_regex: str | None = None,
                    videos: bool = False) -> list[Sample]:
    """List an image set in any of the forms of docs/formats.md, sorted by numeric id.

    1. a Kaggle folder: images with ``ID_mask.ext`` masks beside them (or none, for test);
    2. a generic folder with ``images/`` and optional ``masks/``, matched by stem;
    3. a manifest CSV;
    4. with ``videos`` (the commands that read frames: predict), a video file.
    """
    path = Path(path)
    from nerveseg_cli.io.video import is_video

    if is_video(path):
        return _video_samples(path, videos)
    if path.is_file():
        if not is_manifest(path):
            raise NervesegError(f"{path}: {_not_a_set(path, videos)}")
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


def _not_a_set(path: Path, videos: bool) -> str:
    """Why a file is not an image set, naming the forms the command reads (a video of an
    unread suffix is told which suffixes are)."""
    from nerveseg_cli.io.video import VIDEO_SUFFIXES

    if path.suffix.lower() == ".csv":
        return "not a manifest CSV (header must start with id,image)"
    forms = ["a manifest CSV (.csv, header id,image...)"]
    if videos:
        forms.append(f"a video ({' '.join(VIDEO_SUFFIXES)})")
    return (f"not an image set: a file given as one must be {' or '.join(forms)}; else give a "
            "folder of images")


def _video_samples(path: Path, allowed: bool) -> list[Sample]:
    """A video's frames as samples (ids frame_000001 ...; the subject: the video's name)."""
    from nerveseg_cli.io.video import frame_id, probe_video, refuse_video

    if not allowed:
        refuse_video(path)
    info = probe_video(path)
    return [Sample(frame_id(i), path, None, path.stem, frame=i) for i in range(info.frames)]


def discover_maps(path: str | Path) -> dict[str, Path]:
    """Map id -> file for a folder of per-image maps (masks or probability PNGs).

    Accepts a flat folder of ``ID.ext`` files (what ``rle-decode`` and ``predict`` write), a
    Kaggle folder (its ``ID_mask`` files) or a generic folder (its ``masks/``).
    """
    path = require_folder(Path(path), "a folder of maps (ID.png ...)")
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
        raise NervesegError(f"{path}: cannot read CSV ({brief(exc)})") from exc


def read_csv_rows(path: str | Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Return the header and an iterator of (line number, row) for the data rows."""
    path = require_file(Path(path), "a CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NervesegError(f"{path}: cannot read CSV ({brief(exc)})") from exc
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
    ids = IdRegister()
    for line, row in rows:
        if len(row) != len(header):
            raise NervesegError(f"{path}, line {line}: {len(row)} fields, but the header has "
                                f"{len(header)} ({','.join(header)})")
        for name, index in extra_col.items():
            extra[name].append(row[index].strip())
        sample_id = ids.add(validate_id(row[col["id"]].strip(), f"{path}, line {line}"),
                            f"{path}, line {line}", f"on line {line}")
        image = _manifest_path(row[col["image"]].strip(), path.parent)
        mask = _manifest_path(row[col["mask"]].strip(), path.parent)
        flag = row[col["has_mask"]].strip()
        if flag not in ("", "0", "1"):
            raise NervesegError(f"{path}, line {line}: has_mask must be 0, 1 or empty, "
                                f"not {flag!r}")
        samples.append(Sample(sample_id, image, mask, row[col["subject"]].strip() or sample_id,
                              None if flag == "" else flag == "1", f"{path}, line {line}"))
    if not samples:
        raise NervesegError(f"{path}: manifest has no rows")
    return samples, extra


MAX_FOLDS = 10_000


def parse_folds(samples: Sequence[Sample], texts: Sequence[str]) -> np.ndarray:
    """A manifest's ``fold`` column as integers: -1 (or empty) for rows left out, else a fold
    from 0; a bad cell is an error naming its row."""
    folds = np.empty(len(samples), dtype=np.int64)
    for row, (sample, text) in enumerate(zip(samples, texts, strict=True)):
        try:
            value = int(text) if text != "" else -1
        except ValueError:
            value = None
        if value is None or not -1 <= value < MAX_FOLDS:
            raise NervesegError(f"{sample.origin or sample.id}: fold of {sample.id} is "
                                f"{text[:30]!r}, not an integer from -1 (left out) to "
                                f"{MAX_FOLDS - 1}")
        folds[row] = value
    return folds


def discover_with_columns(path: str | Path, subject_regex: str | None = None,
                          videos: bool = False) -> tuple[list[Sample], dict[str, list[str]]]:
    """``discover_images``, plus a manifest's optional columns (none for a folder)."""
    path = Path(path)
    if path.is_file() and is_manifest(path):
        return read_manifest_columns(path)
    return discover_images(path, subject_regex, videos), {}


def check_sample_files(samples: Sequence[Sample], source: str | Path) -> None:
    """Raise naming the first sample (its manifest row) whose image or mask is missing."""
    for sample in samples:
        where = sample.origin or str(source)
        if sample.image is None:
            raise NervesegError(f"{where}: {sample.id} has no image")
        for kind, file in (("image", sample.image), ("mask", sample.mask)):
            if file is not None and file.is_dir():
                raise NervesegError(f"{where}: {kind} of {sample.id} is a folder, not an image "
                                    f"file: {file}")
            if file is not None and not file.is_file():
                raise NervesegError(f"{where}: {kind} of {sample.id} not found: {file}")


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

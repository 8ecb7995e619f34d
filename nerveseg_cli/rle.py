"""Kaggle run-length encoding: column-major, 1-indexed ``start length`` pairs, ascending.

The 3x2 mask ``[[1,0],[1,0],[0,1]]`` numbers its pixels top to bottom, then left to right
(1..6), so its foreground is pixels 1, 2 and 6 and it encodes as ``1 2 6 1``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.io.datasets import read_csv_rows, sort_ids, validate_id
from nerveseg_cli.io.images import MaskReader
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, write_mask
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.postprocess import PostProcess, resolve_postprocess

SUBMISSION = "submission"
TRAIN = "train"
HEADERS = {SUBMISSION: ["img", "pixels"], TRAIN: ["subject", "img", "pixels"]}
# Integers (signs let a negative start or length be named as such) between single spaces.
_DIGITS_FIELD = re.compile(r"-?[0-9]+(?: -?[0-9]+)*")
# A token longer than this is past the end of any image MAX_PIXELS allows (and of int64).
_MAX_DIGITS = 12


class RleError(ValueError):
    """A malformed RLE string; the caller adds the file and line."""


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (bool or 0/non-zero) as a Kaggle RLE string; empty mask -> ''."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    # Column-major order is the row-major order of the transpose.
    flat = np.ascontiguousarray(mask.T).reshape(-1).astype(bool, copy=False)
    if flat.size == 0:
        return ""
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    starts = bounds[:-1]
    lengths = np.diff(bounds)
    first_on = 0 if flat[0] else 1
    starts = starts[first_on::2]
    lengths = lengths[first_on::2]
    if starts.size == 0:
        return ""
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def parse_runs(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string into 0-based starts and lengths.

    Strict: the field is empty, or decimal integers separated by single spaces, with no space
    before the first or after the last (Kaggle's own files are written so)."""
    if not rle:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if not _DIGITS_FIELD.fullmatch(rle):
        raise RleError(_token_problem(rle))
    tokens = rle.split(" ")
    too_long = next((t for t in tokens if len(t.lstrip("-")) > _MAX_DIGITS), None)
    if too_long is not None:  # beyond any image, and beyond int64
        raise RleError(f"token {too_long[:20]}{'...' if len(too_long) > 20 else ''} is past "
                       f"the image end ({n_pixels} pixels) by far")
    values = np.array(tokens, dtype=np.int64)
    if values.size % 2:
        raise RleError(f"odd number of tokens ({values.size}); expected start/length pairs")
    starts, lengths = values[0::2], values[1::2]
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        raise RleError(f"run {bad[0] + 1} starts at {starts[bad[0]]}; starts are 1-based")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise RleError(f"run {bad[0] + 1} (start {starts[bad[0]]}) has length "
                       f"{lengths[bad[0]]}; lengths must be at least 1")
    ends = starts + lengths - 1
    bad = np.flatnonzero(ends > n_pixels)
    if bad.size:
        raise RleError(f"run {bad[0] + 1} ({starts[bad[0]]} {lengths[bad[0]]}) ends at pixel "
                       f"{ends[bad[0]]}, past the image end ({n_pixels} pixels)")
    bad = np.flatnonzero(starts[1:] <= ends[:-1])
    if bad.size:
        i = bad[0] + 1
        problem = "is out of order" if starts[i] < starts[i - 1] else "overlaps the previous run"
        raise RleError(f"run {i + 1} ({starts[i]} {lengths[i]}) {problem} "
                       f"({starts[i - 1]} {lengths[i - 1]}); runs must ascend without overlap")
    return starts - 1, lengths


def _token_problem(rle: str) -> str:
    """What is wrong with a field that is not single-space-separated digits."""
    if rle != rle.strip(" "):
        return "space before the first or after the last token (fields are 'start length ...')"
    if "  " in rle:
        return "two spaces in a row (tokens are separated by single spaces)"
    for token in rle.split(" "):
        if not re.fullmatch(r"-?[0-9]+", token):
            return f"token {token[:20]!r} is not an integer"
    return f"{rle[:20]!r} is not space-separated integers"


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode a Kaggle RLE string into a (height, width) bool mask; raises RleError."""
    return runs_to_mask(*parse_runs(rle, height * width), height, width)


def runs_to_mask(starts: np.ndarray, lengths: np.ndarray, height: int,
                 width: int) -> np.ndarray:
    """Paint validated 0-based runs into a (height, width) bool mask (a transposed view)."""
    flat = np.zeros(height * width, dtype=bool)
    if starts.size:
        # Every foreground index at once: position within the run plus the run's start.
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        flat[np.arange(offsets.size) + offsets] = True
    return flat.reshape(width, height).T


# --------------------------------------------------------------------------------------------
# Kaggle CSV files


@dataclass(frozen=True)
class RleRow:
    id: str
    line: int
    pixels: str


@dataclass(frozen=True)
class RleTable:
    path: Path
    format: str  # SUBMISSION or TRAIN
    rows: list[RleRow]


def csv_format(header: Sequence[str], path: Path) -> str:
    for name, expected in HEADERS.items():
        if list(header) == expected:
            return name
    raise NervesegError(f"{path}: header {','.join(header)!r} is neither 'img,pixels' "
                        "(submission) nor 'subject,img,pixels' (train)")


def read_rle_csv(path: str | Path) -> RleTable:
    """Read a Kaggle CSV, checking ids (safe, unique) but not yet the RLE strings."""
    path = Path(path)
    header, lines = read_csv_rows(path)
    fmt = csv_format(header, path)
    rows: list[RleRow] = []
    seen: dict[str, int] = {}
    for line, row in lines:
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise NervesegError(f"{where}: expected {len(header)} fields, found {len(row)}")
        if fmt == TRAIN:
            subject, img = row[0].strip(), row[1].strip()
            sample_id = f"{subject}_{img}"
            if not subject or not img:
                raise NervesegError(f"{where}: empty subject or img field")
        else:
            sample_id = row[0].strip()
        validate_id(sample_id, where)
        if sample_id in seen:
            raise NervesegError(f"{where}: duplicate id {sample_id!r} (first on line "
                                f"{seen[sample_id]})")
        seen[sample_id] = line
        rows.append(RleRow(sample_id, line, row[-1]))
    return RleTable(path, fmt, rows)


def parse_table(table: RleTable, size: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validate every row of a table into runs, naming the line of the first bad one."""
    width, height = size
    runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in table.rows:
        try:
            runs[row.id] = parse_runs(row.pixels, height * width)
        except RleError as exc:
            raise NervesegError(f"{table.path}, line {row.line} (id {row.id}): {exc}") from None
    return runs


def format_rle_csv(encoded: dict[str, str], fmt: str, order: Sequence[str] | None = None) -> str:
    """Render id -> RLE as CSV text; rows in numeric id order unless ``order`` is given."""
    ids = list(order) if order is not None else sort_ids(encoded)
    out = io.StringIO()
    out.write(",".join(HEADERS[fmt]) + "\n")
    for sample_id in ids:
        if fmt == TRAIN:
            parts = sample_id.split("_")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise NervesegError(f"id {sample_id!r} is not SUBJECT_IMG, which --format train "
                                    "needs; use --format submission")
            out.write(f"{parts[0]},{parts[1]},{encoded[sample_id]}\n")
        else:
            out.write(f"{sample_id},{encoded[sample_id]}\n")
    return out.getvalue()


def read_ids_file(path: str | Path) -> list[str]:
    """Ids, in file order, from the first column of a CSV such as sample_submission.csv."""
    path = Path(path)
    header, lines = read_csv_rows(path)
    column = header.index("img") if "img" in header else header.index("id") \
        if "id" in header else 0
    ids: list[str] = []
    seen: set[str] = set()
    for line, row in lines:
        sample_id = validate_id(row[column].strip(), f"{path}, line {line}")
        if sample_id in seen:
            raise NervesegError(f"{path}, line {line}: duplicate id {sample_id!r}")
        seen.add(sample_id)
        ids.append(sample_id)
    if not ids:
        raise NervesegError(f"{path}: no ids")
    return ids


# --------------------------------------------------------------------------------------------
# post-processing and the commands' library functions


@dataclass(frozen=True)
class EncodeResult:
    rows: int
    non_empty: int
    missing: list[str]
    extra: list[str]
    post: PostProcess


if TYPE_CHECKING:
    from nerveseg_cli.sources import MapSource


def encode_folder(source: str | Path, out: str | Path, *, fmt: str = SUBMISSION,
                  threshold: float | None = None, min_area: int | None = None,
                  postprocess: str | Path | None = None, ids_from: str | Path | None = None,
                  allow_missing: bool = False, label: int | None = None,
                  size: tuple[int, int] = (580, 420), overwrite: bool = False,
                  presence_threshold: float | None = None,
                  presence_from: str | Path | None = None, workers: int = 4) -> EncodeResult:
    """``nerveseg rle-encode``: masks or probability maps -> a Kaggle CSV.

    (Keyword options, one per ``nerveseg rle-encode`` flag, as every command's function has.)
    """
    if fmt not in HEADERS:
        raise NervesegError(f"format {fmt!r} is not one of {', '.join(HEADERS)}")
    post = resolve_postprocess(threshold, min_area, postprocess)
    from nerveseg_cli.sources import open_source

    order = read_ids_file(ids_from) if ids_from else None
    maps = open_source(source, size)
    maps.gate_by_presence(presence_threshold, presence_from)
    with Outputs(inputs=[*maps.input_paths(), ids_from, postprocess, presence_from]) as outputs:
        target = outputs.file(out, overwrite=overwrite)
        encoded, missing, extra = _encode_maps(maps, post, order, label, allow_missing,
                                               ids_from, workers)
        atomic_write_text(target, format_rle_csv(encoded, fmt, order))
    return EncodeResult(len(encoded), sum(1 for v in encoded.values() if v), missing, extra, post)


def _encode_maps(maps: MapSource, post: PostProcess, order: list[str] | None,
                 label: int | None, allow_missing: bool, ids_from: str | Path | None,
                 workers: int) -> tuple[dict[str, str], list[str], list[str]]:
    """id -> RLE of every map (in ``order`` when given), the ids of ``order`` without a map
    (encoded empty), and the maps not in ``order`` (left out)."""
    source = maps.path
    available = set(maps.ids)
    missing: list[str] = []
    extra: list[str] = []
    if order is not None:
        missing = [i for i in order if i not in available]
        extra = sort_ids(available - set(order))
        if missing and not allow_missing:
            raise NervesegError(f"{source}: {len(missing)} ids of {ids_from} have no prediction "
                                f"(first: {', '.join(missing[:5])}); pass --allow-missing to "
                                "write them empty")
        if extra:
            warn(f"{source}: {len(extra)} predictions are not in {ids_from} and were left out "
                 f"(first: {', '.join(extra[:5])})")
    ids = [i for i in (order or maps.ids) if i in available]
    reader = MaskReader(label, str(source))

    def encode(sample_id: str) -> str:
        if label is not None and sample_id not in maps.gated:
            return rle_encode(post.drop_small(maps.read_mask(sample_id, reader)))
        values = maps.read_values(sample_id, reader)
        mask = post.apply(values)
        if not maps.has_prediction_json:  # low values are no label-map hint in a prob. folder
            reader.note(values, mask)
        return rle_encode(mask)

    encoded = dict(zip(ids, thread_map(encode, ids, workers), strict=True))
    reader.finish()
    for sample_id in missing:
        encoded[sample_id] = ""
    return encoded, missing, extra


@dataclass(frozen=True)
class DecodeResult:
    format: str
    written: int
    non_empty: int


def decode_csv_to_folder(csv_path: str | Path, out: str | Path, *,
                         size: tuple[int, int] = (580, 420), overwrite: bool = False,
                         workers: int = 4,
                         progress: Callable[[int], None] | None = None) -> DecodeResult:
    """``nerveseg rle-decode``: a Kaggle CSV -> one mask PNG per row.

    Every row is validated before anything is written, so a bad CSV leaves no output.
    """
    table = read_rle_csv(csv_path)
    runs = parse_table(table, size)
    width, height = size
    with Outputs(inputs=[csv_path]) as outputs:
        folder = outputs.folder(out, overwrite=overwrite)

        def write(sample_id: str) -> None:
            write_mask(folder / f"{sample_id}.png",
                       runs_to_mask(*runs[sample_id], height, width))

        for _ in thread_map(write, sort_ids(runs), workers):
            if progress:
                progress(1)
    return DecodeResult(table.format, len(runs), sum(1 for s, _ in runs.values() if s.size))


"""Kaggle run-length encoding: column-major, 1-indexed ``start length`` pairs, ascending.

The 3x2 mask ``[[1,0],[1,0],[0,1]]`` numbers its pixels top to bottom, then left to right
(1..6), so its foreground is pixels 1, 2 and 6 and it encodes as ``1 2 6 1``.
"""

from __future__ import annotations

import re

import numpy as np

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

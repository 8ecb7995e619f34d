"""Any text into the parsers of user files gives a parsed result or one clean error, never a
crash: RLE fields and Kaggle CSVs, manifests, presence files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.datasets import read_manifest_columns
from nerveseg_cli.io.kaggle_csv import parse_table, read_rle_csv
from nerveseg_cli.io.probmaps import read_presence
from nerveseg_cli.io.rle import RleError, parse_runs, rle_encode

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
# Text that looks like what these files hold, and anything else.
RLE_TEXT = st.one_of(
    st.text(alphabet="0123456789 -\t.x", max_size=40),
    st.lists(st.integers(-5, 10**25), max_size=8).map(lambda v: " ".join(map(str, v))),
    st.text(max_size=30),
)
CSV_TEXT = st.one_of(
    st.text(alphabet="img,pixels subject 0123456789_\n\r\"'.x-/", max_size=200),
    st.text(max_size=120),
)


@FAST
@given(RLE_TEXT, st.integers(1, 10**6))
def test_any_rle_field_parses_or_is_an_rle_error(text: str, n_pixels: int) -> None:
    try:
        starts, lengths = parse_runs(text, n_pixels)
    except RleError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # what parses is valid: in the image, ascending, non-overlapping, and round-trips
    assert starts.size == lengths.size
    if starts.size:
        assert starts.min() >= 0 and lengths.min() >= 1
        assert (starts + lengths).max() <= n_pixels
        assert np.all(starts[1:] >= starts[:-1] + lengths[:-1])


@FAST
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 6))
def test_encoded_masks_parse_back(bits: list[bool], width: int) -> None:
    height = -(-len(bits) // width)
    mask = np.zeros(height * width, dtype=bool)
    mask[: len(bits)] = bits
    mask = mask.reshape(height, width)
    starts, lengths = parse_runs(rle_encode(mask), mask.size)
    flat = np.zeros(mask.size, dtype=bool)
    for start, length in zip(starts, lengths, strict=True):
        flat[start:start + length] = True
    np.testing.assert_array_equal(flat.reshape(width, height).T, mask)


def _write(text: str, name: str) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@FAST
@given(CSV_TEXT)
def test_any_kaggle_csv_reads_or_is_one_clean_error(text: str) -> None:
    path = _write(text, "sub.csv")
    try:
        table = read_rle_csv(path)
        parse_table(table, (7, 5))
    except NervesegError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)


@FAST
@given(st.one_of(
    st.text(alphabet="id,image,mask,subject,has_mask,fold\n01_.-/ax\"", max_size=200),
    st.text(max_size=120),
))
def test_any_manifest_reads_or_is_one_clean_error(text: str) -> None:
    path = _write(text, "m.csv")
    try:
        samples, columns = read_manifest_columns(path)
    except NervesegError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert samples and all(len(values) == len(samples) for values in columns.values())
    assert len({s.id for s in samples}) == len(samples)


@FAST
@given(st.text(alphabet="id,presence\n0123456789.e-naif", max_size=120))
def test_any_presence_file_reads_or_is_one_clean_error(text: str) -> None:
    path = _write(text, "presence.csv")
    try:
        presence = read_presence(path)
    except NervesegError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert all(0.0 <= value <= 1.0 for value in presence.values())

"""The RLE codec and Kaggle CSV handling, against a plain reference and the example of
docs/formats.md."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.kaggle_csv import format_rle_csv, parse_table, read_ids_file, read_rle_csv
from nerveseg_cli.io.rle import RleError, rle_decode, rle_encode


def reference_encode(mask: np.ndarray) -> str:
    """Plain per-pixel encoder: walk pixels column by column, 1-indexed."""
    height, width = mask.shape
    runs: list[list[int]] = []
    previous = False
    for index in range(height * width):
        value = bool(mask[index % height, index // height])
        if value and not previous:
            runs.append([index + 1, 0])
        if value:
            runs[-1][1] += 1
        previous = value
    return " ".join(f"{s} {n}" for s, n in runs)


masks = st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(
    lambda w: arrays(bool, (h, w))))


def test_design_worked_example() -> None:
    mask = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    assert rle_encode(mask) == "1 2 6 1"
    np.testing.assert_array_equal(rle_decode("1 2 6 1", 3, 2), mask)


@given(masks)
@settings(max_examples=300, deadline=None)
def test_round_trip_and_reference(mask: np.ndarray) -> None:
    encoded = rle_encode(mask)
    assert encoded == reference_encode(mask)
    np.testing.assert_array_equal(rle_decode(encoded, *mask.shape), mask)


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (420, 580)])
def test_empty_and_full(shape: tuple[int, int]) -> None:
    empty = np.zeros(shape, dtype=bool)
    full = np.ones(shape, dtype=bool)
    assert rle_encode(empty) == ""
    assert rle_encode(full) == f"1 {shape[0] * shape[1]}"
    np.testing.assert_array_equal(rle_decode("", *shape), empty)
    np.testing.assert_array_equal(rle_decode(f"1 {shape[0] * shape[1]}", *shape), full)


def test_run_continues_from_bottom_of_one_column_into_next() -> None:
    mask = np.zeros((4, 3), dtype=bool)
    mask[2:, 0] = True  # bottom of column 0 (pixels 3, 4)
    mask[:2, 1] = True  # top of column 1 (pixels 5, 6)
    assert rle_encode(mask) == "3 4"
    np.testing.assert_array_equal(rle_decode("3 4", 4, 3), mask)


def test_uint8_masks_encode_like_bool() -> None:
    mask = np.array([[0, 255], [7, 0]], dtype=np.uint8)
    assert rle_encode(mask) == rle_encode(mask > 0)


@pytest.mark.parametrize(("rle", "fragment"), [
    ("1 2 3", "odd number of tokens"),
    ("1 x", "not an integer"),
    ("1.5 2", "not an integer"),
    ("1_0 2", "not an integer"),
    ("0 2", "starts at 0"),
    ("-3 2", "starts at -3"),
    ("1 0", "length 0"),
    ("6 2", "past the image end"),
    ("4 1 1 1", "out of order"),
    ("1 3 2 1", "overlaps"),
])
def test_decode_rejects(rle: str, fragment: str) -> None:
    with pytest.raises(RleError, match=fragment):
        rle_decode(rle, 2, 3)  # 6 pixels


def test_adjacent_runs_are_valid() -> None:
    np.testing.assert_array_equal(rle_decode("1 2 3 1", 3, 1), np.ones((3, 1), dtype=bool))


def test_csv_formats_and_ordering(tmp_path) -> None:
    encoded = {"2_10": "1 1", "2_2": "", "10_1": "3 2"}
    text = format_rle_csv(encoded, "train")
    assert text == "subject,img,pixels\n2,2,\n2,10,1 1\n10,1,3 2\n"
    sub = format_rle_csv({"10": "", "9": "1 1"}, "submission")
    assert sub == "img,pixels\n9,1 1\n10,\n"
    path = tmp_path / "t.csv"
    path.write_text(text)
    table = read_rle_csv(path)
    assert table.format == "train"
    assert [r.id for r in table.rows] == ["2_2", "2_10", "10_1"]
    assert [r.line for r in table.rows] == [2, 3, 4]
    runs = parse_table(table, (2, 3))
    assert runs["2_2"][0].size == 0


def test_train_format_needs_subject_ids() -> None:
    with pytest.raises(NervesegError, match="SUBJECT_IMG"):
        format_rle_csv({"17": ""}, "train")


@pytest.mark.parametrize(("content", "fragment"), [
    ("a,b\n1,\n", "neither"),
    ("img,pixels\n1,1 1\n1,\n", "line 3: duplicate id '1'"),
    ("img,pixels\nx_1,1 1\nX_1,\n", "line 3: id 'X_1' differs from 'x_1'"),
    ("img,pixels\n../evil,\n", "line 2: id '../evil' is not a safe file name"),
    ("img,pixels\n/abs,\n", "not a safe file name"),
    ("subject,img,pixels\n1,,\n", "line 2: empty subject"),
    ("img,pixels\n1,2,3\n", "line 2: expected 2 fields"),
    ("", "empty CSV"),
])
def test_read_rle_csv_rejects(tmp_path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(NervesegError, match=fragment.replace("(", r"\(")):
        read_rle_csv(path)


def test_parse_table_names_the_line(tmp_path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("img,pixels\n1,1 1\n2,1 1 1\n")
    with pytest.raises(NervesegError, match=r"s\.csv, line 3 \(id 2\): odd number"):
        parse_table(read_rle_csv(path), (3, 2))


def test_read_ids_file_keeps_file_order(tmp_path) -> None:
    path = tmp_path / "sample.csv"
    path.write_text("img,pixels\n3,1 1\n1,1 1\n2,1 1\n")
    assert read_ids_file(path) == ["3", "1", "2"]

"""Multi-class Kaggle CSVs: the long (``ImageId,ClassId,EncodedPixels``) and joined
(``Image_Label,EncodedPixels``) forms written and read back exactly, and read strictly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.kaggle_csv import (
    JOINED,
    LONG,
    format_multiclass_csv,
    parse_multiclass,
    read_pairs_file,
    read_rle_csv,
    table_classes,
)
from nerveseg_cli.io.rle import rle_encode, runs_to_mask
from nerveseg_cli.names import reserved_as

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,7}", fullmatch=True)  # no '_': joined suffixes
IMAGE_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,9}", fullmatch=True).filter(
    lambda i: ".." not in i)


def write(folder: Path, text: str, name: str = "masks.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def read_masks(path: Path, size: tuple[int, int], classes: Classes | None
               ) -> tuple[Classes, dict[str, dict[int, np.ndarray]]]:
    """What a reader gets back: the classes and image -> class index -> bool mask."""
    table = read_rle_csv(path)
    found = table_classes(table, classes)
    width, height = size
    runs = parse_multiclass(table, size, found)
    return found, {image: {k: runs_to_mask(*r, height, width) for k, r in by_class.items()}
                   for image, by_class in runs.items()}


@st.composite
def class_sets(draw: st.DrawFn) -> tuple[Classes, int, int, dict[str, list[np.ndarray]]]:
    """Classes, a size, and per image one mask per foreground class (classes may overlap)."""
    # distinct ignoring case and none reserved, as Classes requires (one folder each beside
    # the files of an output, on any file system)
    names = draw(st.lists(NAME.filter(lambda n: n.casefold() != "background"
                                      and reserved_as(n) is None),
                          min_size=1, max_size=4, unique_by=str.casefold))
    classes = Classes(("background", *names))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    ids = draw(st.lists(IMAGE_ID, min_size=1, max_size=3, unique_by=str.casefold))
    mask = arrays(bool, (height, width))
    masks = {i: [draw(mask) for _ in names] for i in ids}
    return classes, height, width, masks


@FAST
@given(class_sets(), st.sampled_from([LONG, JOINED]), st.booleans())
def test_masks_round_trip_through_either_form(
        case: tuple[Classes, int, int, dict[str, list[np.ndarray]]], fmt: str,
        pass_classes: bool) -> None:
    classes, height, width, masks = case
    encoded = {(i, k): rle_encode(m) for i, by_class in masks.items()
               for k, m in enumerate(by_class, start=1)}
    path = write(Path(tempfile.mkdtemp()), format_multiclass_csv(encoded, fmt, classes))
    table = read_rle_csv(path)
    assert table.format == fmt and table.multiclass
    assert len(table.rows) == len(masks) * len(classes.foreground)
    found, back = read_masks(path, (width, height), classes if pass_classes else None)
    assert found.count == classes.count
    if fmt == JOINED or pass_classes:  # the long form without --classes names them classN
        assert found == classes
    assert set(back) == set(masks)
    for image, by_class in masks.items():
        for k, mask in enumerate(by_class, start=1):
            np.testing.assert_array_equal(back[image][k], mask)


@FAST
@given(st.integers(2, 6).flatmap(lambda c: st.tuples(
    st.just(c), st.integers(1, 7), st.integers(1, 7))).flatmap(
    lambda t: st.tuples(st.just(t[0]), arrays(np.uint8, (t[1], t[2]),
                                              elements=st.integers(0, t[0] - 1)))),
    st.sampled_from([LONG, JOINED]))
def test_label_maps_round_trip_class_by_class(case: tuple[int, np.ndarray], fmt: str) -> None:
    count, labels = case
    classes = Classes.parse(str(count))
    encoded = {("1_2", k): rle_encode(labels == k) for k in range(1, count)}
    path = write(Path(tempfile.mkdtemp()), format_multiclass_csv(encoded, fmt, classes))
    height, width = labels.shape
    _, back = read_masks(path, (width, height), classes)
    rebuilt = np.zeros_like(labels)
    for k, mask in back["1_2"].items():
        assert not np.any(rebuilt[mask]), "a label map's classes do not overlap"
        rebuilt[mask] = k
    np.testing.assert_array_equal(rebuilt, labels)


def test_long_form_text_and_numeric_row_order() -> None:
    classes = Classes.parse("background,nerve,vessel")
    encoded = {("10", 1): "1 2", ("2", 2): "3 1", ("2", 1): ""}
    assert format_multiclass_csv(encoded, LONG, classes) == (
        "ImageId,ClassId,EncodedPixels\n2,1,\n2,2,3 1\n10,1,1 2\n10,2,\n")


def test_joined_form_text_appends_class_names() -> None:
    classes = Classes.parse("background,Fish,Sugar")
    encoded = {("1_2", 1): "1 2", ("1_2", 2): ""}
    assert format_multiclass_csv(encoded, JOINED, classes) == (
        "Image_Label,EncodedPixels\n1_2_Fish,1 2\n1_2_Sugar,\n")


def test_given_order_is_the_row_order() -> None:
    classes = Classes.parse("3")
    order = [("9", 2), ("1", 1), ("9", 1)]
    text = format_multiclass_csv({("9", 2): "1 1"}, LONG, classes, order)
    assert text == "ImageId,ClassId,EncodedPixels\n9,2,1 1\n1,1,\n9,1,\n"


def test_joined_form_refuses_class_names_with_underscores() -> None:
    # "1_left_nerve" would read back as image "1_left", class "nerve"
    classes = Classes.parse("background,left_nerve,vessel")
    with pytest.raises(NervesegError, match="'left_nerve' holds '_'"):
        format_multiclass_csv({("1", 1): "1 1"}, JOINED, classes)


def test_long_form_keeps_class_names_with_underscores(tmp_path: Path) -> None:
    classes = Classes.parse("background,left_nerve,vessel")
    path = write(tmp_path, format_multiclass_csv({("1", 1): "1 1"}, LONG, classes))
    found, back = read_masks(path, (2, 2), classes)
    assert found == classes and back["1"][1][0, 0] and not back["1"][2].any()


@pytest.mark.parametrize("header", ["ClassId,EncodedPixels,ImageId",
                                    "EncodedPixels,ImageId,ClassId",
                                    "ImageId,EncodedPixels,ClassId,Comment"])
def test_long_form_columns_are_found_by_name(tmp_path: Path, header: str) -> None:
    cells = {"ImageId": "img7", "ClassId": "2", "EncodedPixels": "2 3", "Comment": "x"}
    row = ",".join(cells[name] for name in header.split(","))
    path = write(tmp_path, f"{header}\n{row}\n")
    table = read_rle_csv(path)
    assert table.format == LONG
    found, back = read_masks(path, (3, 2), None)
    assert found.names == ("background", "class1", "class2")
    expected = np.zeros(6, bool)
    expected[1:4] = True
    np.testing.assert_array_equal(back["img7"][2], expected.reshape(3, 2).T)
    assert 1 not in back["img7"]  # no row: no runs (an empty mask)


def test_long_form_class_ids_with_leading_zeros_are_the_same_class(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n1,02,1 1\n")
    assert read_rle_csv(path).rows[0].klass == "2"


@pytest.mark.parametrize(("label", "image", "name"), [
    ("1_2_nerve", "1_2", "nerve"),
    ("a_b_c_Fish", "a_b_c", "Fish"),
    ("17_vessel", "17", "vessel"),
    ("img.png_Sugar", "img.png", "Sugar"),
])
def test_joined_ids_split_at_the_last_underscore(tmp_path: Path, label: str, image: str,
                                                 name: str) -> None:
    path = write(tmp_path, f"Image_Label,EncodedPixels\n{label},1 1\n")
    table = read_rle_csv(path)
    assert table.format == JOINED
    assert (table.rows[0].id, table.rows[0].klass) == (image, name)
    found, back = read_masks(path, (2, 2), None)
    assert found.names == ("background", name)
    assert back[image][1][0, 0]


def test_joined_classes_found_in_order_of_first_appearance(tmp_path: Path) -> None:
    path = write(tmp_path, "Image_Label,EncodedPixels\n1_Sugar,\n1_Fish,\n2_Fish,\n"
                           "2_Sugar,\n2_Gravel,\n")
    assert table_classes(read_rle_csv(path), None).names == ("background", "Sugar", "Fish",
                                                              "Gravel")


def test_joined_rows_map_to_the_index_of_classes(tmp_path: Path) -> None:
    classes = Classes.parse("background,Fish,Flower,Gravel")
    path = write(tmp_path, "Image_Label,EncodedPixels\n1_Gravel,1 1\n1_Fish,\n")
    _, back = read_masks(path, (2, 2), classes)
    assert sorted(back["1"]) == [1, 3] and back["1"][3][0, 0] and not back["1"][1].any()


def test_an_image_without_a_class_row_has_no_runs(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n5,1,1 1\n3,3,\n")
    table = read_rle_csv(path)
    runs = parse_multiclass(table, (2, 2), Classes.parse("4"))
    assert list(runs) == ["3", "5"]  # numeric id order
    assert sorted(runs["5"]) == [1] and sorted(runs["3"]) == [3]


# --------------------------------------------------------------------------------------------
# strict reading: each error names the file and the line


def _error(path: Path, classes: Classes | None = None, size: tuple[int, int] = (3, 2)) -> str:
    with pytest.raises(NervesegError) as info:
        read_masks(path, size, classes)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


@pytest.mark.parametrize(("rows", "fragment"), [
    ("1,0,1 1\n", "line 2: ClassId '0' is not a class index from 1"),
    ("1,1,\n1,x,1 1\n", "line 3: ClassId 'x' is not a class index from 1"),
    ("1,-1,\n", "ClassId '-1' is not a class index"),
    ("1,1.0,\n", "ClassId '1.0' is not a class index"),
    ("1,+1,\n", "ClassId '+1' is not a class index"),
    ("1,,\n", "ClassId '' is not a class index"),
    ("1,\u00b2,\n", "is not a class index"),  # a superscript two: str.isdigit, not a digit
    ("1,\uff11,\n", "is not a class index"),  # a full-width one
    ("1,1,1 1\n1,1,\n", "line 3: duplicate id '1' class '1' (first on line 2)"),
    ("1,1,1 1\n1,01,\n", "line 3: duplicate id '1' class '1'"),
    ("a1,1,1 1\nA1,1,\n", "line 3: id 'A1' differs from 'a1' (first on line 2) only in case"),
    ("a1,1,1 1\na1,2,\nA1,2,\n", "line 4: id 'A1' differs from 'a1' (first on line 2) only"),
    ("1,1,1 2 3\n", "line 2 (id 1): odd number of tokens"),
    ("1,1,1 3 2 1\n", "line 2 (id 1): run 2 (2 1) overlaps the previous run"),
    ("1,1,4 1 1 1\n", "is out of order"),
    ("1,1,5 3\n", "line 2 (id 1): run 1 (5 3) ends at pixel 7, past the image end (6"),
    ("1,1, 1 1\n", "space before the first"),
    ("1,1,0 1\n", "starts at 0"),
    ("1,2\n", "line 2: expected 3 fields, found 2"),
    ("1,2,1 1,extra\n", "line 2: expected 3 fields, found 4"),
    ("../x,1,\n", "line 2: id '../x' is not a safe file name"),
])
def test_long_form_errors_name_file_and_line(tmp_path: Path, rows: str, fragment: str) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n" + rows)
    assert fragment in _error(path)


def test_class_ids_beyond_a_label_map_need_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n1,1,\n1,254,\n")
    assert read_masks(path, (3, 2), None)[0].count == 255
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n1,1,\n2,255,\n", "big.csv")
    assert "line 3 (id 2): ClassId 255 is beyond the 255 classes" in _error(path)
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n1," + "9" * 40 + ",\n", "huge.csv")
    assert "line 2 (id 1): ClassId 99999" in _error(path)


def test_class_id_beyond_classes_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n1,1,\n7,3,1 1\n")
    message = _error(path, Classes.parse("background,nerve,vessel"))
    assert "line 3 (id 7): ClassId 3 is beyond --classes background,nerve,vessel" in message
    assert "(ClassId 1 to 2)" in message


@pytest.mark.parametrize(("rows", "classes", "fragment"), [
    ("1_nerve,\n1_artery,1 1\n", "background,nerve,vessel",
     "line 3: class 'artery' is not one of nerve, vessel"),
    ("1_background,\n", "background,nerve", "class 'background' is not one of nerve"),
    ("nerve,\n", None, "line 2: Image_Label 'nerve' is not IMAGE_CLASS"),
    ("1_,\n", None, "line 2: Image_Label '1_' is not IMAGE_CLASS"),
    ("_nerve,\n", None, "line 2: Image_Label '_nerve' is not IMAGE_CLASS"),
    ("1_ner ve,\n", None, "line 2: id 'ner ve' is not a safe file name"),
    ("1_nerve,1 1\n1_nerve,\n", None, "line 3: duplicate id '1' class 'nerve' (first on line 2)"),
    ("1_nerve,1 1 1\n", None, "line 2 (id 1): odd number of tokens"),
    ("1_nerve,1 7\n", None, "past the image end"),
    ("1_nerve\n", None, "line 2: expected 2 fields, found 1"),
    ("1_nerve,\n1_background,\n", None, "names the class 'background'; pass --classes"),
    ("".join(f"1_c{i},\n" for i in range(255)), None, "names 255 classes, beyond the 254"),
])
def test_joined_form_errors_name_file_and_line(tmp_path: Path, rows: str, classes: str | None,
                                               fragment: str) -> None:
    path = write(tmp_path, "Image_Label,EncodedPixels\n" + rows)
    assert fragment in _error(path, Classes.parse(classes) if classes else None)


def test_joined_form_without_rows_needs_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "Image_Label,EncodedPixels\n")
    assert "no rows, so no classes; pass --classes" in _error(path)
    assert table_classes(read_rle_csv(path), Classes.parse("3")) == Classes.parse("3")


# --------------------------------------------------------------------------------------------
# sample submissions (--ids-from)


def test_read_pairs_file_keeps_file_order_long(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n9,2,1 1\n3,1,1 1\n9,1,\n")
    assert read_pairs_file(path, Classes.parse("3")) == [("9", 2), ("3", 1), ("9", 1)]


def test_read_pairs_file_keeps_file_order_joined(tmp_path: Path) -> None:
    path = write(tmp_path, "Image_Label,EncodedPixels\n2_b_vessel,1 1\n1_nerve,\n2_b_nerve,\n")
    classes = Classes.parse("background,nerve,vessel")
    assert read_pairs_file(path, classes) == [("2_b", 2), ("1", 1), ("2_b", 1)]


@pytest.mark.parametrize("text", ["img,pixels\n1,1 1\n", "subject,img,pixels\n1,1,\n"])
def test_read_pairs_file_refuses_a_binary_csv(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(NervesegError, match="a binary CSV") as info:
        read_pairs_file(path, Classes.parse("3"))
    assert str(info.value).startswith(str(path))


def test_read_pairs_file_refuses_classes_it_does_not_have(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n1,1,\n1,3,\n")
    with pytest.raises(NervesegError, match="line 3 .*beyond --classes"):
        read_pairs_file(path, Classes.parse("3"))


def test_read_pairs_file_refuses_no_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "ImageId,ClassId,EncodedPixels\n")
    with pytest.raises(NervesegError, match="no rows"):
        read_pairs_file(path, Classes.parse("3"))


# --------------------------------------------------------------------------------------------
# any text: a result or one clean error


MULTI_TEXT = st.one_of(
    st.tuples(st.sampled_from(["ImageId,ClassId,EncodedPixels\n", "Image_Label,EncodedPixels\n",
                               "ClassId,ImageId,EncodedPixels\n"]),
              st.lists(st.one_of(st.text(alphabet="0123456789_,\n ab.-x\u00b2\"", max_size=20),
                                 st.sampled_from(["1_background,", "255", "_a,", "1 1"])),
                       max_size=6).map("".join)).map("".join),
    st.text(max_size=60).map(lambda t: "Image_Label,EncodedPixels\n" + t),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MULTI_TEXT, st.sampled_from([None, "3", "background,a,b"]))
def test_any_multiclass_csv_reads_or_is_one_clean_error(text: str,
                                                         classes: str | None) -> None:
    path = write(Path(tempfile.mkdtemp()), text)
    try:
        found, back = read_masks(path, (4, 3), Classes.parse(classes) if classes else None)
    except NervesegError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), str(exc)
        return
    assert all(0 < k < found.count for by_class in back.values() for k in by_class)

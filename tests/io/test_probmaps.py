"""Probability folders: the 8-bit round trip, strict reading, presence.csv, prediction.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nerveseg_cli import __version__
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.probmaps import (
    png_shape,
    probability_to_values,
    read_presence,
    read_probability_folder,
    read_probability_values,
    write_prediction_json,
    write_presence,
    write_probability,
)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 9)),
              elements=st.floats(0.0, 1.0)))
def test_write_read_round_trip_within_half_a_level(probability: np.ndarray) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "1.png"
        write_probability(path, probability)
        values = read_probability_values(path)
        assert values.dtype == np.uint8 and values.shape == probability.shape
        np.testing.assert_array_equal(values, np.floor(255 * probability + 0.5))
        read_back = read_probability_values(path).astype(np.float32) / np.float32(255)
        assert read_back.dtype == np.float32
        assert np.all(np.abs(read_back - probability) <= 0.5 / 255 + 1e-6)
        # Re-writing what was read is lossless.
        write_probability(path, read_back)
        np.testing.assert_array_equal(read_probability_values(path), values)


def test_values_round_half_up_and_uint8_is_kept() -> None:
    np.testing.assert_array_equal(probability_to_values(np.array([0.5, 1 / 510, 1.0, 0.0])),
                                  [128, 1, 255, 0])
    values = np.array([[3, 250]], dtype=np.uint8)
    assert probability_to_values(values) is values
    with pytest.raises(ValueError):
        probability_to_values(np.array([0.2, 1.5]))
    with pytest.raises(ValueError):
        probability_to_values(np.array([np.nan]))


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_probability(tmp_path / "a.png", np.zeros((3, 4)))
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def _folder(root: Path) -> Path:
    folder = root / "probs"
    write_probability(folder / "2.png", np.full((5, 7), 0.25))
    write_probability(folder / "10.png", np.full((4, 3), 0.75))
    write_probability(folder / "1_1.png", np.zeros((6, 6)))
    return folder


def test_folder_lists_ids_in_numeric_order_with_sizes(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "prediction.json").write_text('{"command": "predict"}')
    (folder / "notes.txt").write_text("ignored")
    (folder / ".10.png.abc.tmp").write_bytes(b"half-written")
    (folder / "masks").mkdir()
    result = read_probability_folder(folder)
    assert result.ids == ["1_1", "2", "10"]
    assert result.sizes == {"1_1": (6, 6), "2": (5, 7), "10": (4, 3)}
    assert result.presence is None
    assert result.prediction == {"command": "predict"}


def test_png_shape_reads_the_header(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((13, 21), np.uint8))
    assert png_shape(tmp_path / "a.png") == (13, 21)


@pytest.mark.parametrize(("name", "make", "fragment"), [
    ("3.png", lambda p: cv2.imwrite(str(p), np.zeros((4, 4), np.uint16)), "16-bit"),
    ("3.png", lambda p: cv2.imwrite(str(p), np.zeros((4, 4, 3), np.uint8)), "RGB"),
    ("3.png", lambda p: cv2.imwrite(str(p), np.zeros((4, 4, 4), np.uint8)), "RGBA"),
    ("3.png", lambda p: cv2.imwrite(str(p.with_suffix(".tif")), np.zeros((4, 4), np.uint8))
     and p.with_suffix(".tif").rename(p), "not a PNG"),
    ("3.tif", lambda p: cv2.imwrite(str(p), np.zeros((4, 4), np.uint8)), "not a PNG"),
    ("3.jpg", lambda p: cv2.imwrite(str(p), np.zeros((4, 4), np.uint8)), "not a PNG"),
    ("3.png", lambda p: p.write_bytes(b"\x89PNG"), "not a PNG"),
])
def test_strict_reading_names_the_bad_file(tmp_path: Path, name: str, make, fragment: str
                                           ) -> None:
    folder = _folder(tmp_path)
    make(folder / name)
    with pytest.raises(NervesegError, match=fragment) as info:
        read_probability_folder(folder)
    assert name in str(info.value)


def test_empty_folder_and_unsafe_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NervesegError, match="no probability maps"):
        read_probability_folder(tmp_path / "empty")
    with pytest.raises(NervesegError, match="no such folder"):
        read_probability_folder(tmp_path / "absent")


def test_decoded_size_is_checked(tmp_path: Path) -> None:
    write_probability(tmp_path / "a.png", np.zeros((4, 5)))
    with pytest.raises(NervesegError, match="map is 5x4, expected 6x4"):
        read_probability_values(tmp_path / "a.png", (4, 6))


def test_presence_round_trip_and_folder_check(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_presence(folder / "presence.csv", {"10": 0.9, "2": 0.1234567, "1_1": 0.0})
    assert (folder / "presence.csv").read_text() == (
        "id,presence\n1_1,0.000000\n2,0.123457\n10,0.900000\n")
    assert read_probability_folder(folder).presence == {"1_1": 0.0, "2": 0.123457, "10": 0.9}
    write_presence(folder / "presence.csv", {"10": 0.9, "2": 0.1})
    with pytest.raises(NervesegError, match="presence.csv: no row for 1 maps.*1_1"):
        read_probability_folder(folder)


@pytest.mark.parametrize(("text", "fragment"), [
    ("img,p\n1,0.5\n", "header must start with id,presence"),
    ("id,presence\n1,maybe\n", "line 2: presence 'maybe' is not a number"),
    ("id,presence\n1,1.5\n", "line 2: presence 1.5 is outside"),
    ("id,presence\n1,0.5\n1,0.2\n", "line 3: duplicate id"),
    ("id,presence\nb1,0.5\nB1,0.2\n", "line 3: id 'B1' differs from 'b1' .first on line 2. only"),
    ("id,presence\n../x,0.5\n", "not a safe file name"),
])
def test_presence_is_read_strictly(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "presence.csv").write_text(text)
    with pytest.raises(NervesegError, match=fragment):
        read_presence(tmp_path / "presence.csv")


def test_prediction_json_records_provenance(tmp_path: Path) -> None:
    path = write_prediction_json(tmp_path, "ensemble", {"members": ["a", "b"]},
                                 {"method": "mean"}, upstream=[None, {"command": "predict"}],
                                 extra={"images": 3})
    data = json.loads(path.read_text())
    assert data["command"] == "ensemble"
    assert data["nerveseg_version"] == __version__
    assert data["inputs"]["members"] == [os.path.abspath("a"), os.path.abspath("b")]
    assert data["options"] == {"method": "mean"}
    assert data["images"] == 3
    assert data["upstream"][1] == {"command": "predict"}
    assert "created" in data

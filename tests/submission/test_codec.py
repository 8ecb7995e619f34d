"""``rle-encode`` and ``rle-decode`` through the CLI on synth data, bad inputs included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nerveseg_cli.io.images import read_mask
from nerveseg_cli.io.outputs import write_image
from tests.conftest import assert_one_line_error, run_cli


def test_decode_then_encode_is_byte_identical(synth_root: Path, tmp_path: Path) -> None:
    decoded = tmp_path / "decoded"
    result = run_cli("rle-decode", synth_root / "train_masks.csv", "--out", decoded,
                     "--size", "64x48")
    assert result.exit_code == 0, result.stderr
    assert len(list(decoded.glob("*.png"))) == 24
    for mask_file in (synth_root / "train").glob("*_mask.tif"):
        sample_id = mask_file.stem[: -len("_mask")]
        np.testing.assert_array_equal(read_mask(decoded / f"{sample_id}.png"),
                                      read_mask(mask_file))
    out = tmp_path / "again.csv"
    result = run_cli("rle-encode", decoded, "--format", "train", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == (synth_root / "train_masks.csv").read_bytes()


def test_encode_kaggle_folder_directly(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.csv"
    assert run_cli("rle-encode", synth_root / "train", "--format", "train",
                   "--out", out).exit_code == 0
    assert out.read_bytes() == (synth_root / "train_masks.csv").read_bytes()


def probability_folder(root: Path) -> Path:
    """Three 4x4 probability maps: 1 has 4 pixels at 0.8, 2 has 2 at 0.55, 3 is empty."""
    folder = root / "probs"
    maps = {"1": np.zeros((4, 4), np.uint8), "2": np.zeros((4, 4), np.uint8),
            "3": np.full((4, 4), 60, np.uint8)}
    maps["1"][:2, :2] = 204
    maps["2"][0, :2] = 140
    for name, values in maps.items():
        write_image(folder / f"{name}.png", values)
    return folder


def test_probability_folder_threshold_and_min_area(tmp_path: Path) -> None:
    probs = probability_folder(tmp_path)
    out = tmp_path / "sub.csv"
    assert run_cli("rle-encode", probs, "--out", out).exit_code == 0
    assert out.read_text() == "img,pixels\n1,1 2 5 2\n2,1 1 5 1\n3,\n"
    assert run_cli("rle-encode", probs, "--out", out, "--overwrite", "--threshold", "0.6",
                   "--min-area", "0").exit_code == 0
    assert out.read_text() == "img,pixels\n1,1 2 5 2\n2,\n3,\n"
    assert run_cli("rle-encode", probs, "--out", out, "--overwrite", "--min-area",
                   "3").exit_code == 0
    assert out.read_text() == "img,pixels\n1,1 2 5 2\n2,\n3,\n"
    post = tmp_path / "postprocess.json"
    post.write_text(json.dumps({"threshold": 0.2, "min_area": 0}))
    assert run_cli("rle-encode", probs, "--out", out, "--overwrite", "--postprocess",
                   post).exit_code == 0
    assert out.read_text() == "img,pixels\n1,1 2 5 2\n2,1 1 5 1\n3,1 16\n"
    # An explicit option wins over the file.
    assert run_cli("rle-encode", probs, "--out", out, "--overwrite", "--postprocess", post,
                   "--threshold", "0.5").exit_code == 0
    assert out.read_text() == "img,pixels\n1,1 2 5 2\n2,1 1 5 1\n3,\n"


def test_ids_from_order_missing_and_extra(tmp_path: Path) -> None:
    probs = probability_folder(tmp_path)
    ids = tmp_path / "sample.csv"
    ids.write_text("img,pixels\n3,1 1\n1,1 1\n4,1 1\n")
    out = tmp_path / "sub.csv"
    result = run_cli("rle-encode", probs, "--out", out, "--ids-from", ids)
    assert_one_line_error(result, "1 ids of", "first: 4", "--allow-missing")
    assert not out.exists()
    result = run_cli("rle-encode", probs, "--out", out, "--ids-from", ids, "--allow-missing")
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == "img,pixels\n3,\n1,1 2 5 2\n4,\n"
    assert "warning: " in result.stderr and "not in" in result.stderr  # id 2 left out


def test_label_maps(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    write_image(folder / "1.png", np.array([[0, 1], [2, 1]], np.uint8))
    out = tmp_path / "sub.csv"
    result = run_cli("rle-encode", folder, "--out", out)
    assert result.exit_code == 0 and "--label" in result.stderr
    assert run_cli("rle-encode", folder, "--out", out, "--overwrite", "--label",
                   "1").exit_code == 0
    assert out.read_text() == "img,pixels\n1,3 2\n"


def test_encode_refuses_existing_output(tmp_path: Path) -> None:
    probs = probability_folder(tmp_path)
    out = tmp_path / "sub.csv"
    out.write_text("keep me")
    assert_one_line_error(run_cli("rle-encode", probs, "--out", out), "--overwrite")
    assert out.read_text() == "keep me"


def test_encode_train_format_needs_subject_ids(tmp_path: Path) -> None:
    probs = probability_folder(tmp_path)
    out = tmp_path / "t.csv"
    assert_one_line_error(run_cli("rle-encode", probs, "--format", "train", "--out", out),
                          "SUBJECT_IMG")
    assert not out.exists()
    assert_one_line_error(run_cli("rle-encode", probs, "--format", "x", "--out", out),
                          "format")


BAD_CSVS = {
    "odd": ("img,pixels\n1,1 2\n2,1 2 3\n", "line 3 (id 2): odd number of tokens"),
    "word": ("img,pixels\n1,1 a\n", "line 2 (id 1): token 'a' is not an integer"),
    "zero_start": ("img,pixels\n1,0 2\n", "line 2 (id 1): run 1 starts at 0"),
    "zero_length": ("img,pixels\n1,1 0\n", "line 2 (id 1): run 1 (start 1) has length 0"),
    "past_end": ("img,pixels\n1,3070 5\n", "past the image end (3072 pixels)"),
    "unsorted": ("img,pixels\n1,10 2 1 2\n", "out of order"),
    "overlap": ("img,pixels\n1,1 5 3 2\n", "overlaps the previous run"),
    "duplicate": ("img,pixels\n1,\n1,\n", "line 3: duplicate id '1'"),
    "escape": ("img,pixels\n../../x,\n", "line 2: id '../../x' is not a safe file name"),
    "escape_train": ("subject,img,pixels\n..,/x,\n", "line 2: id '.._/x'"),
    "header": ("id,rle\n1,\n", "neither 'img,pixels'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_decode_bad_input(tmp_path: Path, case: str) -> None:
    content, fragment = BAD_CSVS[case]
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(content)
    out = tmp_path / "out"
    result = run_cli("rle-decode", csv_path, "--out", out, "--size", "64x48")
    assert_one_line_error(result, "bad.csv", fragment)
    assert not out.exists()


def test_decode_missing_file_and_bad_size(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("rle-decode", tmp_path / "nope.csv", "--out", tmp_path / "o"),
                          "nope.csv")
    (tmp_path / "s.csv").write_text("img,pixels\n1,\n")
    assert_one_line_error(run_cli("rle-decode", tmp_path / "s.csv", "--out", tmp_path / "o",
                                  "--size", "64by48"), "WxH")


def test_decode_refuses_non_empty_output(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("x")
    assert_one_line_error(run_cli("rle-decode", synth_root / "train_masks.csv", "--out", out,
                                  "--size", "64x48"), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["other.txt"]
    assert run_cli("rle-decode", synth_root / "train_masks.csv", "--out", out, "--size",
                   "64x48", "--overwrite").exit_code == 0


def test_decode_submission_names_files_by_img(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("img,pixels\n2,1 3\n1,\n")
    result = run_cli("rle-decode", tmp_path / "s.csv", "--out", tmp_path / "o", "--size",
                     "2x3", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["masks_written"] == 2
    np.testing.assert_array_equal(read_mask(tmp_path / "o" / "2.png"),
                                  [[True, False], [True, False], [True, False]])

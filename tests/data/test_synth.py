"""``nerveseg synth``: layout, determinism, the planted duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nerveseg_cli.io.datasets import discover_images
from nerveseg_cli.io.images import read_image, read_mask
from nerveseg_cli.io.kaggle_csv import read_rle_csv
from nerveseg_cli.io.rle import rle_decode
from tests._helpers_audit import tree_digest
from tests.conftest import assert_one_line_error, run_cli


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    args = ["--subjects", "2", "--per-subject", "6", "--test", "3", "--size", "40x30"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run_cli("synth", tmp_path / name, *args, "--seed", seed).exit_code == 0
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_layout_and_csvs(synth_root: Path) -> None:
    train = discover_images(synth_root / "train")
    assert len(train) == 24 and all(s.mask is not None for s in train)
    assert read_image(train[0].image).shape == (48, 64)
    table = read_rle_csv(synth_root / "train_masks.csv")
    decoded = {row.id: rle_decode(row.pixels, 48, 64) for row in table.rows}
    for sample in train:
        np.testing.assert_array_equal(decoded[sample.id], read_mask(sample.mask))
    sample = pd.read_csv(synth_root / "sample_submission.csv", dtype=str)
    assert sample["img"].tolist() == [str(i) for i in range(1, 7)]
    assert len(discover_images(synth_root / "test")) == 6


def test_about_half_have_a_nerve(tmp_path: Path) -> None:
    run_cli("synth", tmp_path / "d", "--subjects", "6", "--per-subject", "20", "--test", "0",
            "--size", "48x32")
    masks = [read_mask(s.mask).any() for s in discover_images(tmp_path / "d" / "train")]
    assert 0.3 < np.mean(masks) < 0.7


def test_planted_duplicates_conflict(synth_root: Path) -> None:
    planted = pd.read_csv(synth_root / "planted_duplicates.csv", dtype=str)
    assert sorted(planted["kind"]) == ["exact"] * 3 + ["near"] * 3
    folder = synth_root / "train"
    for row in planted.itertuples():
        a, b = read_image(folder / f"{row.id_a}.tif"), read_image(folder / f"{row.id_b}.tif")
        difference = np.abs(a.astype(int) - b.astype(int))
        if row.kind == "exact":
            assert difference.max() == 0
        else:
            assert 0 < difference.max() <= 2
        mask_a = read_mask(folder / f"{row.id_a}_mask.tif")
        mask_b = read_mask(folder / f"{row.id_b}_mask.tif")
        assert mask_a.any() != mask_b.any()  # one empty, one with a nerve


def test_consecutive_frames_alike_but_not_copies(synth_root: Path) -> None:
    folder = synth_root / "train"
    a = read_image(folder / "1_1.tif").astype(float)
    b = read_image(folder / "1_2.tif").astype(float)
    other = read_image(folder / "2_1.tif").astype(float)
    same_subject = np.corrcoef(cv2_blur(a).ravel(), cv2_blur(b).ravel())[0, 1]
    other_subject = np.corrcoef(cv2_blur(a).ravel(), cv2_blur(other).ravel())[0, 1]
    assert np.abs(a - b).max() > 10
    assert same_subject > other_subject


def cv2_blur(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 3)


def test_bad_options(tmp_path: Path) -> None:
    assert run_cli("synth", tmp_path / "x", "--subjects", "0").exit_code == 2
    assert_one_line_error(run_cli("synth", tmp_path / "y", "--size", "big"), "WxH")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "f").write_text("")
    assert_one_line_error(run_cli("synth", tmp_path / "z"), "--overwrite")

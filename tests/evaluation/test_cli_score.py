"""``nerveseg score`` through the CLI on synth data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nerveseg_cli.io.images import read_mask
from nerveseg_cli.io.outputs import write_image
from tests.conftest import assert_one_line_error, run_cli


def noisy_probabilities(synth_root: Path, out: Path) -> Path:
    """Probability maps from the true masks: blurred edges, and a 4-pixel false blob on every
    image without a nerve (synth nerves at 64x48 cover about 45 pixels)."""
    import cv2

    rng = np.random.default_rng(0)
    for mask_file in sorted((synth_root / "train").glob("*_mask.tif")):
        mask = read_mask(mask_file).astype(np.float32)
        values = cv2.GaussianBlur(mask, (5, 5), 1.5) * 0.9 + rng.uniform(0, 0.1, mask.shape)
        if not mask.any():
            values[:2, :2] = 0.7
        write_image(out / f"{mask_file.stem[:-5]}.png",
                    np.round(values * 255).clip(0, 255).astype(np.uint8))
    return out


def test_perfect_masks_score_one(synth_root: Path, tmp_path: Path) -> None:
    result = run_cli("score", synth_root / "train_masks.csv", synth_root / "train", "--size",
                     "64x48", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["dice"] == 1.0 and summary["images"] == 24
    assert summary["presence_fp"] == 0 and summary["presence_fn"] == 0
    assert "auc" not in summary  # binary input


def test_probability_folder_report_files_and_table(synth_root: Path, tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    out = tmp_path / "score"
    result = run_cli("score", probs, synth_root / "train_masks.csv", "--size", "64x48",
                     "--out", out, "--by", "subject")
    assert result.exit_code == 0, result.stderr
    assert "Kaggle mean Dice" in result.stdout and "pixel AUC" in result.stdout
    assert "by subject" in result.stdout
    per_image = pd.read_csv(out / "per_image.csv", dtype={"id": str, "subject": str})
    assert list(per_image.columns) == ["id", "subject", "dice", "iou", "gt_area", "pred_area",
                                       "tp", "fp", "fn", "tn"]
    assert len(per_image) == 24
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dice"] == pytest.approx(per_image["dice"].mean(), abs=1e-6)
    assert 0.9 < summary["auc"] <= 1.0
    empty = per_image[per_image["gt_area"] == 0]
    assert (empty["fp"] == 4).all() and (empty["dice"] == 0).all()  # the false blobs
    subjects = pd.read_csv(out / "subjects.csv", dtype={"subject": str})
    assert subjects["subject"].tolist() == ["1", "2", "3"]
    assert subjects["images"].sum() == 24


def test_sweep_writes_postprocess_that_rle_encode_accepts(synth_root: Path,
                                                          tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    out = tmp_path / "score"
    result = run_cli("score", probs, synth_root / "train", "--out", out, "--sweep-threshold",
                     "0.3:0.7:0.1", "--sweep-min-area", "0:20:5", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    grid = np.array(data["sweep"]["dice"])
    assert grid.shape == (5, 5)
    post = json.loads((out / "postprocess.json").read_text())
    assert post["mean_dice"] == pytest.approx(grid.max())
    # the best pair must remove the 4-pixel blobs and keep the nerves
    assert 5 <= post["min_area"] <= 20 and post["mean_dice"] > grid[:, 0].max()
    sweep_csv = pd.read_csv(out / "sweep.csv")
    assert len(sweep_csv) == 25
    # 17 thresholds, wider than the runner's 120 columns: every figure printed whole, no markup
    table = run_cli("score", probs, synth_root / "train", "--sweep-threshold", "0.1:0.9:0.05",
                    "--out", tmp_path / "table", "--json")
    best = json.loads(table.stdout)["sweep"]["best"]["dice"]
    table = run_cli("score", probs, synth_root / "train", "--sweep-threshold", "0.1:0.9:0.05",
                    "--out", tmp_path / "table", "--overwrite")
    assert table.exit_code == 0, table.stderr
    assert "min area (rows)" in table.stdout and "[" not in table.stdout
    assert "…" not in table.stdout and f"{best:.4f}" in table.stdout
    grid = next(line for line in table.stdout.splitlines() if line.split()[:2] == ["min", "area"])
    assert grid.split()[2:] == [f"{t / 100:g}" for t in range(10, 91, 5)]
    # Scoring at the chosen pair reproduces the best grid cell.
    again = run_cli("score", probs, synth_root / "train", "--postprocess",
                    out / "postprocess.json", "--json")
    assert json.loads(again.stdout)["summary"]["dice"] == pytest.approx(post["mean_dice"])
    sub = tmp_path / "sub.csv"
    assert run_cli("rle-encode", probs, "--postprocess", out / "postprocess.json", "--format",
                   "train", "--out", sub).exit_code == 0
    again = run_cli("score", sub, synth_root / "train", "--size", "64x48", "--json")
    assert json.loads(again.stdout)["summary"]["dice"] == pytest.approx(post["mean_dice"])


def test_missing_ids_error_and_allow_missing(synth_root: Path, tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    (probs / "2_3.png").unlink()
    (probs / "3_8.png").unlink()
    result = run_cli("score", probs, synth_root / "train")
    assert_one_line_error(result, "2 ground-truth ids have no prediction", "2_3, 3_8",
                          "--allow-missing")
    result = run_cli("score", probs, synth_root / "train", "--allow-missing", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)["summary"]
    assert summary["missing_predictions"] == 2 and summary["images"] == 24


def test_extra_predictions_are_an_error_too(synth_root: Path, tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    write_image(probs / "9_9.png", np.zeros((48, 64), np.uint8))
    assert_one_line_error(run_cli("score", probs, synth_root / "train"),
                          "1 predictions have no ground truth", "9_9")


def test_empty_ground_truth_is_said_before_unmatched_predictions(synth_root: Path,
                                                                 tmp_path: Path) -> None:
    """No ground truth at all: --allow-missing cannot help, so that is the error, with it or
    without it, rather than the predictions lacking ground truth."""
    truth = tmp_path / "truth.csv"
    truth.write_text("img,pixels\n")
    for extra in ((), ("--allow-missing",)):
        result = run_cli("score", synth_root / "train_masks.csv", truth, "--size", "64x48",
                         *extra)
        assert_one_line_error(result, str(truth), "no ground-truth images to score")


def test_size_mismatch_names_file(synth_root: Path, tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    write_image(probs / "1_2.png", np.zeros((10, 10), np.uint8))
    assert_one_line_error(run_cli("score", probs, synth_root / "train"), "1_2.png",
                          "10x10", "64x48")


def test_overlays_of_worst_images(synth_root: Path, tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    overlays = tmp_path / "overlays"
    result = run_cli("score", probs, synth_root / "train", "--overlays", overlays, "--images",
                     synth_root / "train", "--worst", "3")
    assert result.exit_code == 0, result.stderr
    files = sorted(p.name for p in overlays.iterdir())
    assert len(files) == 3 and files[0].startswith("1_")
    import cv2

    first = cv2.imread(str(overlays / files[0]))
    assert first.shape == (48, 64, 3)
    assert_one_line_error(run_cli("score", probs, synth_root / "train", "--overlays",
                                  tmp_path / "o2"), "--images")


def test_manifest_as_ground_truth(synth_root: Path, tmp_path: Path) -> None:
    from nerveseg_cli.io.datasets import discover_images, write_manifest

    manifest = tmp_path / "m.csv"
    write_manifest(manifest, discover_images(synth_root / "train"))
    result = run_cli("score", synth_root / "train", manifest, "--json")
    assert json.loads(result.stdout)["summary"]["dice"] == 1.0


def test_refuses_non_empty_out_before_scoring(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "score"
    out.mkdir()
    (out / "keep").write_text("")
    assert_one_line_error(run_cli("score", synth_root / "train", synth_root / "train", "--out",
                                  out), "--overwrite")


def test_bad_inputs(synth_root: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("score", tmp_path / "nothing", synth_root / "train"),
                          "nothing")
    assert_one_line_error(run_cli("score", synth_root / "train", synth_root / "train", "--by",
                                  "fold"), "--by")
    assert_one_line_error(run_cli("score", synth_root / "train", synth_root / "train",
                                  "--sweep-threshold", "0.7:0.3:0.1"), "--sweep-threshold")
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,img,pixels\n1,1,1 2 3\n")
    assert_one_line_error(run_cli("score", bad, synth_root / "train", "--size", "64x48"),
                          "bad.csv, line 2")
    labels = tmp_path / "labels"
    shutil.copytree(synth_root / "train", labels)
    assert run_cli("score", labels, labels).exit_code == 0


def test_presence_gating_in_score_and_rle_encode(synth_root: Path, tmp_path: Path) -> None:
    probs = noisy_probabilities(synth_root, tmp_path / "probs")
    # presence says "no nerve" exactly where the ground truth is empty: gating removes the
    # false blobs, so the score must rise to the blob-free value.
    from nerveseg_cli.io.datasets import discover_images

    rows = ["id,presence"]
    for sample in discover_images(synth_root / "train"):
        rows.append(f"{sample.id},{0.9 if read_mask(sample.mask).any() else 0.1}")
    (probs / "presence.csv").write_text("\n".join(rows) + "\n")
    plain = json.loads(run_cli("score", probs, synth_root / "train", "--json").stdout)
    gated = run_cli("score", probs, synth_root / "train", "--presence-threshold", "0.5",
                    "--json")
    assert gated.exit_code == 0, gated.stderr
    gated_summary = json.loads(gated.stdout)["summary"]
    assert gated_summary["presence_fp"] == 0
    assert gated_summary["dice"] > plain["summary"]["dice"]
    out = tmp_path / "sub.csv"
    assert run_cli("rle-encode", probs, "--format", "train", "--presence-threshold", "0.5",
                   "--out", out).exit_code == 0
    again = json.loads(run_cli("score", out, synth_root / "train", "--size", "64x48",
                               "--json").stdout)
    assert again["summary"]["dice"] == pytest.approx(gated_summary["dice"])
    elsewhere = tmp_path / "p.csv"
    (probs / "presence.csv").rename(elsewhere)
    assert_one_line_error(run_cli("score", probs, synth_root / "train", "--presence-threshold",
                                  "0.5"), "no presence file")
    assert run_cli("score", probs, synth_root / "train", "--presence-threshold", "0.5",
                   "--presence-from", elsewhere).exit_code == 0

"""``crf``: it sharpens a blurred map onto a real edge, resumes, runs in processes, and refuses
bad input with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from nerveseg_cli.inference.crf import CrfParams, crf_refine, unary_energy
from nerveseg_cli.io.outputs import write_image
from nerveseg_cli.io.probmaps import read_probability_values, write_presence, write_probability
from tests.conftest import assert_one_line_error, run_cli

HEIGHT, WIDTH = 48, 64


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def sharp_scene(seed: int, shift: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, truth, probability): a bright ellipse with a sharp edge on a dark, noisy
    background, and a blurred probability map of it displaced by ``shift`` pixels."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    cy, cx = rng.uniform(20, 28), rng.uniform(26, 38)
    truth = ((ys - cy) / 12) ** 2 + ((xs - cx) / 16) ** 2 <= 1
    image = np.where(truth, 170.0, 70.0) + rng.normal(0, 12, truth.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    probability = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 4)
    return image, truth, np.roll(probability, shift, axis=1)


def make_inputs(root: Path, count: int = 4) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A generic image set (images/) and a probability folder of blurred, shifted maps."""
    truths = {}
    for k in range(count):
        image, truth, probability = sharp_scene(k, shift=3 if k % 2 else -3)
        write_image(root / "set" / "images" / f"{k + 1}.png", image)
        write_probability(root / "probs" / f"{k + 1}.png", probability)
        truths[str(k + 1)] = truth
    return root / "probs", root / "set", truths


def test_crf_raises_dice_on_a_blurred_map_of_a_sharp_edge() -> None:
    for seed in range(3):
        image, truth, probability = sharp_scene(seed)
        before = dice(probability > 0.5, truth)
        image_copy, probability_copy = image.copy(), probability.copy()
        refined = crf_refine(probability, image)
        assert refined.shape == truth.shape and refined.dtype == np.float32
        assert refined.min() >= 0.0 and refined.max() <= 1.0
        after = dice(refined > 0.5, truth)
        assert after > before + 0.05, (seed, before, after)
        np.testing.assert_array_equal(image, image_copy)  # inputs untouched
        np.testing.assert_array_equal(probability, probability_copy)


def test_zero_iterations_return_the_clipped_probabilities() -> None:
    image, _, probability = sharp_scene(0)
    refined = crf_refine(probability, image, CrfParams(iterations=0))
    np.testing.assert_allclose(refined, np.clip(probability, 0.5 / 255, 1 - 0.5 / 255),
                               atol=1e-5)


def test_unary_is_the_negative_log_probability() -> None:
    values = np.array([[0, 128, 255]], dtype=np.uint8)
    energy = unary_energy(values)
    assert energy.shape == (2, 3) and energy.dtype == np.float32
    assert energy.flags.c_contiguous
    p = np.clip(values.reshape(-1) / 255.0, 0.5 / 255, 1 - 0.5 / 255)
    np.testing.assert_allclose(energy, [-np.log(1 - p), -np.log(p)], rtol=1e-5, atol=1e-4)


def test_without_pairwise_terms_the_map_is_kept() -> None:
    image, _, probability = sharp_scene(1)
    params = CrfParams(compat_gaussian=0, compat_bilateral=0, iterations=5)
    refined = crf_refine(probability, image, params)
    np.testing.assert_allclose(refined, np.clip(probability, 0.5 / 255, 1 - 0.5 / 255),
                               atol=1e-5)


def test_cli_refines_and_chains_into_score_and_ensemble(tmp_path: Path) -> None:
    probs, images, truths = make_inputs(tmp_path)
    write_presence(probs / "presence.csv", {"1": 0.9, "2": 0.8, "3": 0.1, "4": 0.5})
    (probs / "prediction.json").write_text('{"command": "predict"}')
    out = tmp_path / "out"
    result = run_cli("crf", probs, images, "--out", out, "--workers", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["refined"] == 4
    for sample_id, truth in truths.items():
        refined = read_probability_values(out / f"{sample_id}.png")
        before = read_probability_values(probs / f"{sample_id}.png")
        assert dice(refined > 127, truth) > dice(before > 127, truth)
    assert (out / "presence.csv").read_text() == (probs / "presence.csv").read_text()
    record = json.loads((out / "prediction.json").read_text())
    assert record["command"] == "crf" and record["complete"] is True
    assert record["options"] == {"sxy_gaussian": 3.0, "compat_gaussian": 3.0,
                                 "sxy_bilateral": 10.0, "schan": 20.0,
                                 "compat_bilateral": 3.0, "iterations": 5}
    assert record["upstream"] == {"command": "predict"}
    # The output is a probability folder: ensemble and rle-encode read it.
    assert run_cli("ensemble", probs, out, "--out", tmp_path / "ens").exit_code == 0
    assert run_cli("rle-encode", out, "--out", tmp_path / "sub.csv").exit_code == 0


def test_two_worker_processes_give_the_same_bytes(tmp_path: Path) -> None:
    probs, images, _ = make_inputs(tmp_path, count=4)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("crf", probs, images, "--out", one, "--workers", "1").exit_code == 0
    result = run_cli("crf", probs, images, "--out", two, "--workers", "2")
    assert result.exit_code == 0, result.stderr
    for sample_id in ("1", "2", "3", "4"):
        assert (one / f"{sample_id}.png").read_bytes() == (two / f"{sample_id}.png").read_bytes()


def test_resume_after_a_partial_run(tmp_path: Path) -> None:
    probs, images, _ = make_inputs(tmp_path, count=4)
    full = tmp_path / "full"
    assert run_cli("crf", probs, images, "--out", full, "--workers", "1").exit_code == 0
    # A run interrupted after two images: two complete maps, a leftover temporary file and
    # the incomplete prediction.json written at the start.
    out = tmp_path / "out"
    out.mkdir()
    for sample_id in ("1", "3"):
        (out / f"{sample_id}.png").write_bytes((full / f"{sample_id}.png").read_bytes())
    (out / ".2.png.x1y2.tmp").write_bytes(b"half")
    record = json.loads((full / "prediction.json").read_text())
    record["complete"] = False
    (out / "prediction.json").write_text(json.dumps(record))
    os.utime(out / "1.png", (1_000_000, 1_000_000))

    assert_one_line_error(run_cli("crf", probs, images, "--out", out), "not empty",
                          "--overwrite")
    assert_one_line_error(run_cli("crf", probs, images, "--out", out, "--resume",
                                  "--iterations", "3"),
                          "--iterations 5, not 3", "--resume needs the same options")
    result = run_cli("crf", probs, images, "--out", out, "--resume", "--workers", "1",
                     "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["refined"] == 2 and summary["skipped_already_written"] == 2
    assert os.stat(out / "1.png").st_mtime == 1_000_000  # not rewritten
    for sample_id in ("1", "2", "3", "4"):
        assert (out / f"{sample_id}.png").read_bytes() == (full / f"{sample_id}.png").read_bytes()
    assert json.loads((out / "prediction.json").read_text())["complete"] is True


def test_empty_image_set(tmp_path: Path) -> None:
    probs, _, _ = make_inputs(tmp_path, count=1)
    (tmp_path / "none").mkdir()
    assert_one_line_error(run_cli("crf", probs, tmp_path / "none", "--out", tmp_path / "out"),
                          "none", "no images found")
    assert not (tmp_path / "out").exists()


def test_map_of_another_size_than_its_image(tmp_path: Path) -> None:
    probs, images, _ = make_inputs(tmp_path, count=3)
    write_probability(probs / "2.png", np.zeros((HEIGHT // 2, WIDTH // 2)))
    result = run_cli("crf", probs, images, "--out", tmp_path / "out", "--workers", "1")
    assert_one_line_error(result, str(probs / "2.png"), "map is 32x24",
                          f"image {images / 'images' / '2.png'} is 64x48")
    assert not (tmp_path / "out").exists()  # checked before anything is written


@pytest.mark.parametrize(("spoil", "fragments"), [
    (lambda p: cv2.imwrite(str(p / "2.png"), np.zeros((HEIGHT, WIDTH), np.uint16)),
     ["2.png", "16-bit PNG"]),
    (lambda p: cv2.imwrite(str(p / "2.tif"), np.zeros((HEIGHT, WIDTH), np.uint8)),
     ["2.tif", "not a PNG"]),
    (lambda p: (p / "2.png").write_bytes(b"GIF89a not a png at all, honestly........"),
     ["2.png", "not a PNG"]),
])
def test_bad_files_in_the_probability_folder(tmp_path: Path, spoil, fragments: list[str]
                                             ) -> None:
    probs, images, _ = make_inputs(tmp_path, count=2)
    if (probs / "2.png").exists() and "tif" in fragments[0]:
        (probs / "2.png").unlink()
    spoil(probs)
    result = run_cli("crf", probs, images, "--out", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_images_that_are_not_2d(tmp_path: Path) -> None:
    probs, images, _ = make_inputs(tmp_path, count=2)
    colour = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    colour[..., 2] = 200
    write_image(images / "images" / "2.png", colour)
    result = run_cli("crf", probs, images, "--out", tmp_path / "out")
    assert_one_line_error(result, "2.png", "not a 2-D grayscale image", "64x48x3")
    # A colour file whose channels are equal is a gray image stored as RGB: accepted.
    gray = cv2.imread(str(images / "images" / "1.png"), cv2.IMREAD_GRAYSCALE)
    write_image(images / "images" / "2.png", np.dstack([gray] * 3))
    assert run_cli("crf", probs, images, "--out", tmp_path / "ok",
                   "--workers", "1").exit_code == 0
    # A multi-page TIFF is a volume.
    (images / "images" / "2.png").unlink()
    pages = [np.zeros((HEIGHT, WIDTH), np.uint8)] * 3
    assert cv2.imwritemulti(str(images / "images" / "2.tif"), pages)
    result = run_cli("crf", probs, images, "--out", tmp_path / "out")
    assert_one_line_error(result, "2.tif", "3 pages", "2-D grayscale")
    assert not (tmp_path / "out").exists()


def test_maps_without_images_and_bad_options(tmp_path: Path) -> None:
    probs, images, _ = make_inputs(tmp_path, count=2)
    write_probability(probs / "7.png", np.zeros((HEIGHT, WIDTH)))
    assert_one_line_error(run_cli("crf", probs, images, "--out", tmp_path / "out"),
                          "no image for 1 maps", "first: 7")
    (probs / "7.png").unlink()
    for option, value, fragment in [("--schan", "0", "--schan 0.0 must be > 0"),
                                    ("--sxy-bilateral", "-1", "--sxy-bilateral -1.0"),
                                    ("--compat-gaussian", "-2", "must be >= 0")]:
        assert_one_line_error(run_cli("crf", probs, images, "--out", tmp_path / "out",
                                      option, value), fragment)
    assert_one_line_error(run_cli("crf", probs, images, "--out", probs), "also an input")
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_folder_written_by_another_command(tmp_path: Path) -> None:
    probs, images, _ = make_inputs(tmp_path, count=2)
    other_probs = make_inputs(tmp_path / "b", count=2)[0]
    other = tmp_path / "other"
    assert run_cli("ensemble", probs, other_probs, "--out", other).exit_code == 0
    assert_one_line_error(run_cli("crf", probs, images, "--out", other, "--resume"),
                          "written by 'ensemble', not crf")


def test_help_lists_every_option() -> None:
    result = run_cli("crf", "--help")
    assert result.exit_code == 0
    for option in ("--out", "--sxy-gaussian", "--compat-gaussian", "--sxy-bilateral", "--schan",
                   "--compat-bilateral", "--iterations", "--workers", "--resume",
                   "--overwrite", "--json"):
        assert option in result.stdout, option
    assert "Inference" in run_cli("--help").stdout

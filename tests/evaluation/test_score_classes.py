"""Scoring several classes against a plain numpy reference: the Kaggle Dice per (image, class)
and their mean (Severstal's metric), the pixel confusion matrix of label maps and the mean IoU
over classes, per-class post-processing and sweeps; and two classes scored exactly as the
binary path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nerveseg_cli.classes import Classes, write_classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import load_class_postprocess
from nerveseg_cli.evaluation.score import ScoreOutputs, score
from nerveseg_cli.evaluation.score_classes import (
    best_posts,
    score_classes,
    write_class_postprocess,
    write_class_score_outputs,
)
from nerveseg_cli.io.kaggle_csv import JOINED, LONG, format_multiclass_csv
from nerveseg_cli.io.outputs import write_image, write_label_map, write_mask
from nerveseg_cli.io.rle import rle_encode

WIDTH, HEIGHT = 16, 12
SIZE = (WIDTH, HEIGHT)
CLASSES = Classes.parse("background,nerve,vessel,artery")


# --------------------------------------------------------------------------------------------
# the reference


def foreground(values: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """value / 255 > threshold, emptied below min_area pixels (docs/formats.md)."""
    mask = values / 255 > threshold + 1e-12
    return mask if mask.sum() >= min_area else np.zeros_like(mask)


def reference_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


@dataclass
class Reference:
    dice: np.ndarray  # (N, K): image by foreground class
    confusion: np.ndarray  # (C, C): truth by prediction
    iou: np.ndarray  # (C,) pooled IoU of each class, NaN where a class is nowhere

    @property
    def mean_iou(self) -> float:
        return float(np.nanmean(self.iou[1:]))


def reference_score(values: np.ndarray, labels: np.ndarray, thresholds: list[float],
                    min_areas: list[int], truths: np.ndarray | None = None) -> Reference:
    """values (N, K, H, W) uint8, labels (N, H, W) class indices; ``truths`` (N, K, H, W):
    each class's own truth, when classes overlap (else ``labels == k``)."""
    n, k_count = values.shape[:2]
    count = k_count + 1
    dice = np.zeros((n, k_count))
    confusion = np.zeros((count, count), np.int64)
    for i in range(n):
        kept = [foreground(values[i, k], thresholds[k], min_areas[k]) for k in range(k_count)]
        for k in range(k_count):
            truth = labels[i] == k + 1 if truths is None else truths[i, k]
            dice[i, k] = reference_dice(kept[k], truth)
        # each pixel: the kept class of highest value, the first on ties; else background
        predicted = np.zeros(labels[i].shape, np.int64)
        best = np.full(labels[i].shape, -1)
        for k in range(k_count):
            take = kept[k] & (values[i, k] > best)
            predicted[take] = k + 1
            best[take] = values[i, k][take]
        for t in range(count):
            for p in range(count):
                confusion[t, p] += int(np.sum((labels[i] == t) & (predicted == p)))
    iou = np.full(count, np.nan)
    for c in range(count):
        union = confusion[c, :].sum() + confusion[:, c].sum() - confusion[c, c]
        if union:
            iou[c] = confusion[c, c] / union
    return Reference(dice, confusion, iou)


# --------------------------------------------------------------------------------------------
# data: label maps and probability maps of several classes


@dataclass
class Data:
    ids: list[str]
    labels: np.ndarray  # (N, H, W)
    values: np.ndarray  # (N, K, H, W)
    pred: Path  # a folder of several classes
    gt_folder: Path  # label maps (palette PNGs)
    gt_csv: Path  # the long form
    gt_joined: Path  # the joined form


def random_labels(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    """Blocky label maps: an empty one, one with a class missing, the rest random."""
    labels = rng.integers(0, count, (n, HEIGHT // 2, WIDTH // 2)).repeat(2, 1).repeat(2, 2)
    labels[0] = 0
    labels[1][labels[1] == count - 1] = 0
    return labels.astype(np.uint8)


def random_values(rng: np.random.Generator, labels: np.ndarray, count: int) -> np.ndarray:
    """Probabilities that mostly agree with the labels, with noise, and an empty map."""
    n = labels.shape[0]
    values = np.empty((n, count - 1, HEIGHT, WIDTH), np.uint8)
    for k in range(1, count):
        on = rng.integers(90, 256, labels.shape)
        off = rng.integers(0, 170, labels.shape)
        values[:, k - 1] = np.where(labels == k, on, off)
    values[2, 0] = 0  # an image predicted empty for the first class
    values[0, -1, :3, :3] = 250  # a small false blob on the empty image
    return values


def write_class_folder(folder: Path, classes: Classes, ids: list[str],
                       values: np.ndarray) -> Path:
    folder.mkdir()
    write_classes(folder, classes)
    for k, name in enumerate(classes.foreground):
        (folder / name).mkdir()
        for i, sample_id in enumerate(ids):
            write_image(folder / name / f"{sample_id}.png", values[i, k])
    return folder


def write_label_folder(folder: Path, ids: list[str], labels: np.ndarray) -> Path:
    folder.mkdir()
    for sample_id, label_map in zip(ids, labels, strict=True):
        write_label_map(folder / f"{sample_id}.png", label_map)
    return folder


def write_truth_csv(path: Path, classes: Classes, ids: list[str], masks: np.ndarray,
                    fmt: str = LONG) -> Path:
    """masks (N, K, H, W) bool -> a multi-class CSV."""
    encoded = {(sample_id, k + 1): rle_encode(masks[i, k])
               for i, sample_id in enumerate(ids) for k in range(masks.shape[1])}
    path.write_text(format_multiclass_csv(encoded, fmt, classes))
    return path


def one_hot(labels: np.ndarray, count: int) -> np.ndarray:
    return np.stack([labels == k for k in range(1, count)], axis=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("score_classes")
    rng = np.random.default_rng(3)
    ids = ["1_1", "1_2", "2_1", "2_10", "10_1"]
    labels = random_labels(rng, CLASSES.count, len(ids))
    values = random_values(rng, labels, CLASSES.count)
    return Data(ids, labels, values,
                write_class_folder(root / "probs", CLASSES, ids, values),
                write_label_folder(root / "labels", ids, labels),
                write_truth_csv(root / "truth.csv", CLASSES, ids, one_hot(labels,
                                                                           CLASSES.count)),
                write_truth_csv(root / "truth_joined.csv", CLASSES, ids,
                                one_hot(labels, CLASSES.count), JOINED))


def assert_matches(report, expected: Reference, ids: list[str]) -> None:  # noqa: ANN001
    assert report.ids == ids
    assert list(report.reports) == list(CLASSES.foreground)
    for k, name in enumerate(CLASSES.foreground):
        np.testing.assert_allclose(report.reports[name].dice, expected.dice[:, k])
    np.testing.assert_array_equal(report.confusion, expected.confusion)
    summary = report.summary
    assert summary["images"] == len(ids)
    assert summary["classes"] == list(CLASSES.names)
    assert summary["dice"] == pytest.approx(expected.dice.mean())  # over (image, class) pairs
    assert summary["mean_iou"] == pytest.approx(expected.mean_iou)
    assert summary["mean_iou_with_background"] == pytest.approx(float(np.nanmean(expected.iou)))
    assert summary["pixel_accuracy"] == pytest.approx(
        np.trace(expected.confusion) / expected.confusion.sum())
    assert summary["confusion"] == expected.confusion.tolist()
    for k, name in enumerate(CLASSES.foreground):
        by_class = summary["by_class"][name]
        assert by_class["dice"] == pytest.approx(expected.dice[:, k].mean())
        assert by_class["pooled_iou"] == pytest.approx(expected.iou[k + 1], nan_ok=True)


# --------------------------------------------------------------------------------------------
# against the reference


@pytest.mark.parametrize("truth", ["gt_folder", "gt_csv", "gt_joined"])
@pytest.mark.parametrize(("threshold", "min_area"), [(None, None), (0.3, None), (0.62, 0),
                                                     (0.5, 30), (None, 45)])
def test_scores_match_the_reference(data: Data, truth: str, threshold: float | None,
                                    min_area: int | None) -> None:
    report = score_classes(data.pred, getattr(data, truth), threshold=threshold,
                           min_area=min_area, size=SIZE, workers=2)
    k = len(CLASSES.foreground)
    expected = reference_score(data.values, data.labels,
                               [0.5 if threshold is None else threshold] * k,
                               [0 if min_area is None else min_area] * k)
    assert_matches(report, expected, data.ids)
    assert 0 < report.summary["dice"] < 1  # neither trivial end


def test_per_class_postprocess_applies_each_class_its_own(data: Data, tmp_path: Path) -> None:
    posts = {"nerve": {"threshold": 0.25, "min_area": 0},
             "vessel": {"threshold": 0.7, "min_area": 10},
             "artery": {"threshold": 0.5, "min_area": 40}}
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"classes": posts}))
    report = score_classes(data.pred, data.gt_folder, postprocess=path, size=SIZE)
    expected = reference_score(data.values, data.labels,
                               [p["threshold"] for p in posts.values()],
                               [p["min_area"] for p in posts.values()])
    assert_matches(report, expected, data.ids)
    for name, post in posts.items():
        assert report.summary["by_class"][name]["threshold"] == post["threshold"]
        assert report.summary["by_class"][name]["min_area"] == post["min_area"]


def test_explicit_options_win_over_a_per_class_postprocess(data: Data, tmp_path: Path) -> None:
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"classes": {
        name: {"threshold": 0.9, "min_area": 100} for name in CLASSES.foreground}}))
    report = score_classes(data.pred, data.gt_folder, postprocess=path, threshold=0.4,
                           size=SIZE)
    k = len(CLASSES.foreground)
    assert_matches(report, reference_score(data.values, data.labels, [0.4] * k, [100] * k),
                   data.ids)


def test_a_binary_postprocess_applies_to_every_class(data: Data, tmp_path: Path) -> None:
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"threshold": 0.35, "min_area": 12}))
    report = score_classes(data.pred, data.gt_csv, postprocess=path, size=SIZE)
    k = len(CLASSES.foreground)
    assert_matches(report, reference_score(data.values, data.labels, [0.35] * k, [12] * k),
                   data.ids)


def test_a_postprocess_lacking_a_class_is_refused(data: Data, tmp_path: Path) -> None:
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"classes": {"nerve": {"threshold": 0.5, "min_area": 0}}}))
    with pytest.raises(NervesegError, match="no post-processing for class 'vessel'"):
        score_classes(data.pred, data.gt_folder, postprocess=path, size=SIZE)


def test_truth_in_a_kaggle_folder_with_images(data: Data, tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    for sample_id, label_map in zip(data.ids, data.labels, strict=True):
        write_image(folder / f"{sample_id}.tif", np.zeros((HEIGHT, WIDTH), np.uint8))
        write_label_map(folder / f"{sample_id}_mask.png", label_map)
    report = score_classes(data.pred, folder, size=SIZE)
    k = len(CLASSES.foreground)
    assert_matches(report, reference_score(data.values, data.labels, [0.5] * k, [0] * k),
                   data.ids)


def test_a_multiclass_csv_prediction_scores_as_its_masks(data: Data, tmp_path: Path) -> None:
    masks = data.values > 127
    pred = write_truth_csv(tmp_path / "pred.csv", CLASSES, data.ids, masks)
    report = score_classes(pred, data.gt_folder, classes=CLASSES, size=SIZE)
    k = len(CLASSES.foreground)
    # a mask's pixels all have the value 255: overlaps go to the first class
    assert_matches(report, reference_score(masks.astype(np.uint8) * 255, data.labels,
                                           [0.5] * k, [0] * k), data.ids)
    assert "auc" not in report.summary["by_class"]["nerve"]  # masks, not probabilities


@pytest.mark.parametrize(("threshold", "min_area"), [(None, None), (0.99, 40), (1.0, 0),
                                                     (0.2, 60)])
def test_label_map_predictions_score_as_their_one_hot_maps(
        data: Data, tmp_path: Path, threshold: float | None, min_area: int | None) -> None:
    rng = np.random.default_rng(11)
    predicted = np.where(rng.random(data.labels.shape) < 0.3,
                         rng.integers(0, CLASSES.count, data.labels.shape), data.labels)
    pred = write_label_folder(tmp_path / "pred", data.ids, predicted.astype(np.uint8))
    report = score_classes(pred, data.gt_folder, classes=CLASSES, threshold=threshold,
                           min_area=min_area, size=SIZE)
    k = len(CLASSES.foreground)
    values = one_hot(predicted, CLASSES.count).astype(np.uint8) * 255
    expected = reference_score(values, data.labels, [0.5 if threshold is None else threshold] * k,
                               [0 if min_area is None else min_area] * k)
    assert_matches(report, expected, data.ids)


def test_perfect_predictions_score_one(data: Data, tmp_path: Path) -> None:
    masks = one_hot(data.labels, CLASSES.count)
    pred = write_class_folder(tmp_path / "pred", CLASSES, data.ids,
                              masks.astype(np.uint8) * 255)
    report = score_classes(pred, data.gt_csv, size=SIZE)
    assert report.summary["dice"] == 1.0 and report.summary["mean_iou"] == 1.0
    assert np.count_nonzero(report.confusion - np.diag(np.diag(report.confusion))) == 0


def test_overlapping_csv_truth_scores_each_class_by_its_own_mask(tmp_path: Path) -> None:
    # Understanding Clouds' masks overlap: class 2 covers part of class 1. A prediction equal
    # to each class's own mask is perfect for every class.
    classes = Classes.parse("background,Fish,Sugar")
    rng = np.random.default_rng(5)
    ids = ["1", "2", "3"]
    masks = rng.random((3, 2, HEIGHT, WIDTH)) < 0.4
    masks[0, 1] = masks[0, 0]  # the same pixels in both classes
    truth = write_truth_csv(tmp_path / "truth.csv", classes, ids, masks, JOINED)
    values = masks.astype(np.uint8) * 255
    pred = write_class_folder(tmp_path / "pred", classes, ids, values)
    report = score_classes(pred, truth, size=SIZE)
    assert [report.reports[n].dice.tolist() for n in classes.foreground] == [[1.0] * 3] * 2
    # the confusion matrix compares label maps: an overlap goes to the first class there
    labels = np.where(masks[:, 0], 1, np.where(masks[:, 1], 2, 0))
    expected = reference_score(values, labels, [0.5, 0.5], [0, 0], truths=masks)
    np.testing.assert_array_equal(report.confusion, expected.confusion)
    assert np.count_nonzero(report.confusion - np.diag(np.diag(report.confusion))) == 0

    noisy = np.where(rng.random(values.shape) < 0.2, 255 - values, values).astype(np.uint8)
    pred = write_class_folder(tmp_path / "noisy", classes, ids, noisy)
    report = score_classes(pred, truth, size=SIZE)
    expected = reference_score(noisy, labels, [0.5, 0.5], [0, 0], truths=masks)
    for k, name in enumerate(classes.foreground):
        np.testing.assert_allclose(report.reports[name].dice, expected.dice[:, k])
    np.testing.assert_array_equal(report.confusion, expected.confusion)


def test_a_class_nowhere_has_no_iou_and_is_left_out_of_the_mean(tmp_path: Path) -> None:
    classes = Classes.parse("3")
    labels = np.zeros((2, HEIGHT, WIDTH), np.uint8)
    labels[:, :4, :4] = 1
    values = np.zeros((2, 2, HEIGHT, WIDTH), np.uint8)
    values[:, 0, :4, :6] = 200
    pred = write_class_folder(tmp_path / "pred", classes, ["1", "2"], values)
    gt = write_label_folder(tmp_path / "gt", ["1", "2"], labels)
    summary = score_classes(pred, gt, size=SIZE).summary
    assert summary["by_class"]["class2"]["dice"] == 1.0  # empty on empty
    assert summary["by_class"]["class2"]["pooled_iou"] != summary["by_class"]["class2"][
        "pooled_iou"]  # NaN: no pixel of class2 anywhere
    assert summary["mean_iou"] == pytest.approx(16 / 24)


# --------------------------------------------------------------------------------------------
# matching, classes and sizes


def test_missing_predictions_are_refused_unless_allowed(data: Data, tmp_path: Path) -> None:
    ids = data.ids[1:]
    pred = write_class_folder(tmp_path / "pred", CLASSES, ids, data.values[1:])
    with pytest.raises(NervesegError, match="1 ground-truth ids have no prediction "
                                            r"\(first: 1_1\)"):
        score_classes(pred, data.gt_folder, size=SIZE)
    report = score_classes(pred, data.gt_folder, size=SIZE, allow_missing=True)
    empty = data.values.copy()
    empty[0] = 0
    k = len(CLASSES.foreground)
    assert_matches(report, reference_score(empty, data.labels, [0.5] * k, [0] * k), data.ids)
    assert report.reports["nerve"].missing_predictions == ["1_1"]


def test_predictions_without_truth_are_refused_unless_allowed(data: Data,
                                                              tmp_path: Path) -> None:
    """As with one class: an id the ground truth lacks is an error, or ignored with a warning
    under --allow-missing (the figures are those of the ids with ground truth)."""
    truth = write_label_folder(tmp_path / "gt", data.ids[1:], data.labels[1:])
    pred = write_class_folder(tmp_path / "pred", CLASSES, data.ids, data.values)
    with pytest.raises(NervesegError, match=r"1 predictions have no ground truth \(first: "
                                            r"1_1\); pass --allow-missing"):
        score_classes(pred, truth, size=SIZE)
    with pytest.warns(UserWarning, match="1 predictions have no ground truth and are ignored"):
        report = score_classes(pred, truth, size=SIZE, allow_missing=True)
    k = len(CLASSES.foreground)
    assert_matches(report, reference_score(data.values[1:], data.labels[1:], [0.5] * k,
                                           [0] * k), data.ids[1:])


def test_truth_of_other_classes_is_refused(data: Data, tmp_path: Path) -> None:
    other = Classes.parse("background,nerve,vein,artery")
    masks = one_hot(data.labels, other.count)
    truth = write_truth_csv(tmp_path / "truth.csv", other, data.ids, masks, JOINED)
    with pytest.raises(NervesegError, match="truth.csv, line 3: class 'vein' is not one of "
                                            "nerve, vessel, artery"):
        score_classes(data.pred, truth, size=SIZE)
    folder = write_class_folder(tmp_path / "truth", other, data.ids,
                                masks.astype(np.uint8) * 255)
    with pytest.raises(NervesegError) as info:
        score_classes(data.pred, folder, size=SIZE)
    assert f"{folder} has classes background,nerve,vein,artery" in str(info.value)
    assert f"{data.pred} has background,nerve,vessel,artery" in str(info.value)


def test_truth_as_a_folder_of_class_masks(data: Data, tmp_path: Path) -> None:
    masks = one_hot(data.labels, CLASSES.count)
    folder = write_class_folder(tmp_path / "truth", CLASSES, data.ids,
                                masks.astype(np.uint8) * 255)
    report = score_classes(data.pred, folder, size=SIZE, threshold=0.4)
    k = len(CLASSES.foreground)
    assert_matches(report, reference_score(data.values, data.labels, [0.4] * k, [0] * k),
                   data.ids)


def test_declared_classes_must_match_the_folder(data: Data) -> None:
    with pytest.raises(NervesegError, match="--classes has background,class1,class2,class3"):
        score_classes(data.pred, data.gt_folder, classes=Classes.parse("4"), size=SIZE)


def test_label_values_beyond_the_classes_are_refused(data: Data, tmp_path: Path) -> None:
    labels = data.labels.copy()
    labels[3, 0, 0] = 7
    gt = write_label_folder(tmp_path / "gt", data.ids, labels)
    with pytest.raises(NervesegError, match="2_10.png: label values .* go beyond the 4 "
                                            "classes"):
        score_classes(data.pred, gt, size=SIZE)


def test_a_prediction_of_another_size_is_refused(data: Data, tmp_path: Path) -> None:
    gt = write_label_folder(tmp_path / "gt", data.ids,
                            np.zeros((len(data.ids), HEIGHT + 1, WIDTH), np.uint8))
    with pytest.raises(NervesegError, match="prediction of 1_1 is 16x12 but its ground truth "
                                            "is 16x13"):
        score_classes(data.pred, gt, size=SIZE)


def test_label_maps_need_classes(tmp_path: Path, data: Data) -> None:
    with pytest.raises(NervesegError, match="label maps of how many classes"):
        score_classes(data.gt_folder, data.gt_folder, size=SIZE)


# --------------------------------------------------------------------------------------------
# two classes: the binary path


@pytest.mark.parametrize(("threshold", "min_area"), [(None, None), (0.3, 25), (0.7, 0)])
def test_two_classes_score_exactly_as_the_binary_path(data: Data, tmp_path: Path,
                                                      threshold: float | None,
                                                      min_area: int | None) -> None:
    classes = Classes.parse("background,nerve")
    labels = (data.labels == 1).astype(np.uint8)
    pred = write_class_folder(tmp_path / "pred", classes, data.ids, data.values[:, :1])
    gt = write_label_folder(tmp_path / "gt", data.ids, labels)
    options = {"threshold": threshold, "min_area": min_area, "size": SIZE,
               "sweep_thresholds": "0.1:0.9:0.2", "sweep_min_areas": "0:40:20"}
    multi = score_classes(pred, gt, **options)
    binary = score(pred / "nerve", gt, **options)
    assert multi.ids == binary.ids
    np.testing.assert_array_equal(multi.reports["nerve"].dice, binary.dice)
    assert multi.summary["dice"] == binary.summary["dice"]
    assert multi.summary["by_class"]["nerve"]["dice"] == binary.summary["dice"]
    for key, value in binary.summary.items():
        assert multi.summary["by_class"]["nerve"][key] == pytest.approx(value, nan_ok=True), key
    np.testing.assert_array_equal(multi.reports["nerve"].sweep.mean_dice,
                                  binary.sweep.mean_dice)
    assert best_posts(multi)["nerve"]["threshold"] == binary.sweep.best[0]
    # the confusion matrix of two classes is the binary counts
    counts = binary.counts
    assert multi.confusion.tolist() == [[int(counts.tn.sum()), int(counts.fp.sum())],
                                        [int(counts.fn.sum()), int(counts.tp.sum())]]


# --------------------------------------------------------------------------------------------
# sweeps


def brute_force_best(values: np.ndarray, truths: np.ndarray, thresholds: np.ndarray,
                     areas: np.ndarray) -> tuple[float, int, float]:
    """The first (threshold, min area) cell, threshold-major, of the highest mean Dice."""
    grid = np.array([[np.mean([reference_dice(foreground(v, t, a), g)
                               for v, g in zip(values, truths, strict=True)])
                      for a in areas] for t in thresholds])
    i, j = np.unravel_index(int(np.argmax(np.round(grid, 12))), grid.shape)
    return float(thresholds[i]), int(areas[j]), float(grid[i, j])


@pytest.mark.parametrize("truth", ["gt_folder", "gt_csv"])
def test_sweep_best_per_class_equals_brute_force(data: Data, tmp_path: Path,
                                                 truth: str) -> None:
    report = score_classes(data.pred, getattr(data, truth), size=SIZE,
                           sweep_thresholds="0.1:0.9:0.1", sweep_min_areas="0:60:15")
    out, post = tmp_path / "score", tmp_path / "postprocess.json"
    write_class_score_outputs(report, ScoreOutputs(out=out, postprocess=post))
    written = json.loads(post.read_text())
    thresholds, areas = np.round(np.arange(1, 10) / 10, 10), np.arange(0, 61, 15)
    for k, name in enumerate(CLASSES.foreground):
        expected = brute_force_best(data.values[:, k], data.labels == k + 1, thresholds, areas)
        chosen = written["classes"][name]
        assert (chosen["threshold"], chosen["min_area"]) == expected[:2], name
        assert chosen["mean_dice"] == pytest.approx(expected[2])
    assert written["mean_dice"] == pytest.approx(
        np.mean([c["mean_dice"] for c in written["classes"].values()]))
    sweep_rows = (out / "sweep.csv").read_text().splitlines()
    assert sweep_rows[0] == "class,threshold,min_area,dice"
    assert len(sweep_rows) == 1 + len(CLASSES.foreground) * thresholds.size * areas.size

    # what the sweep chose, applied, scores what it promised
    posts = load_class_postprocess(post, CLASSES.foreground)
    assert {n: (p.threshold, p.min_area) for n, p in posts.items()} == {
        n: (c["threshold"], c["min_area"]) for n, c in written["classes"].items()}
    again = score_classes(data.pred, getattr(data, truth), postprocess=post, size=SIZE)
    for name, chosen in written["classes"].items():
        assert again.summary["by_class"][name]["dice"] == pytest.approx(chosen["mean_dice"])


def test_postprocess_of_several_classes_written_alone(data: Data, tmp_path: Path) -> None:
    report = score_classes(data.pred, data.gt_folder, size=SIZE, sweep_thresholds="0.2:0.8:0.3")
    path = tmp_path / "postprocess.json"
    write_class_postprocess(report, path)
    written = json.loads(path.read_text())
    assert set(written["classes"]) == set(CLASSES.foreground)
    assert all(c["min_area"] == 0 for c in written["classes"].values())  # areas not swept
    assert written["chosen_from"] == str(data.pred)


def test_score_outputs_tables(data: Data, tmp_path: Path) -> None:
    report = score_classes(data.pred, data.gt_csv, size=SIZE)
    out = tmp_path / "score"
    write_class_score_outputs(report, ScoreOutputs(out=out, by_subject=True))
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.csv", "confusion.csv", "per_image.csv", "subjects.csv", "summary.json"]
    confusion = (out / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "truth\\predicted,background,nerve,vessel,artery"
    assert [list(map(int, row.split(",")[1:])) for row in confusion[1:]] == \
        report.confusion.tolist()
    per_image = (out / "per_image.csv").read_text().splitlines()
    assert per_image[0].startswith("id,subject,class,dice")
    assert len(per_image) == 1 + len(data.ids) * len(CLASSES.foreground)
    assert json.loads((out / "summary.json").read_text())["confusion"] == \
        report.confusion.tolist()


def test_masks_written_with_write_mask_score_as_masks(data: Data, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    write_classes(pred, CLASSES)
    for k, name in enumerate(CLASSES.foreground):
        (pred / name).mkdir()
        for i, sample_id in enumerate(data.ids):
            write_mask(pred / name / f"{sample_id}.png", data.values[i, k] > 127)
    report = score_classes(pred, data.gt_folder, size=SIZE, threshold=0.9)
    k = len(CLASSES.foreground)
    # 0/255 masks: any threshold below 1 keeps them whole
    masks = (data.values > 127).astype(np.uint8) * 255
    assert_matches(report, reference_score(masks, data.labels, [0.5] * k, [0] * k), data.ids)
    assert report.summary["by_class"]["nerve"]["threshold"] == 0.9

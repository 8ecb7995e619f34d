"""Kaggle scoring: mean Dice with empty-on-empty = 1, and the figures a competitor needs next.

Everything derives from two 256-bin histograms per image of the prediction's 8-bit values: one
over all pixels, one over ground-truth pixels. At threshold level L (foreground = value > L)
the true positives are the ground-truth pixels above L and the predicted area all pixels above
L, so any threshold, any min-area and the exact pixel AUC come from the histograms without
re-reading an image or holding pixel lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nerveseg_cli.drawing import overlay
from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.evaluation.postprocess import (
    PostProcess,
    Sweep,
    resolve_postprocess,
    threshold_level,
    write_postprocess,
)
from nerveseg_cli.io.datasets import discover_images, load_image, sort_ids
from nerveseg_cli.io.images import MaskReader
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, write_image
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.sources import ClassSource, MapSource, open_source
from nerveseg_cli.records import json_text

N_LEVELS = 256


# --------------------------------------------------------------------------------------------
# functional core


def value_histograms(values: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(histogram of values over ground-truth pixels, histogram over all pixels), int64."""
    if values.shape != truth.shape:
        raise ValueError(f"prediction {values.shape} and ground truth {truth.shape} differ")
    values = np.ascontiguousarray(values, dtype=np.uint8)
    truth_u8 = np.ascontiguousarray(truth, dtype=bool).view(np.uint8)
    area = cv2.countNonZero(values)
    if area == 0 or area == np.count_nonzero(values == 255):
        # Binary 0/255 maps (masks, CSV predictions) need only three counts; calcHist is slow
        # on them because every pixel lands in one of two bins.
        gt_area = int(np.count_nonzero(truth_u8))
        tp = cv2.countNonZero(cv2.bitwise_and(values, truth_u8 * 255)) if area else 0
        on_truth_hist = np.zeros(N_LEVELS, dtype=np.int64)
        all_hist = np.zeros(N_LEVELS, dtype=np.int64)
        on_truth_hist[[0, 255]] = gt_area - tp, tp
        all_hist[[0, 255]] = values.size - area, area
        return on_truth_hist, all_hist
    everything = cv2.calcHist([values], [0], None, [N_LEVELS], [0, N_LEVELS])
    on_truth = cv2.calcHist([values], [0], truth_u8, [N_LEVELS], [0, N_LEVELS])
    return on_truth.reshape(-1).astype(np.int64), everything.reshape(-1).astype(np.int64)


@dataclass(frozen=True)
class Counts:
    """Per-image pixel confusion counts (arrays of shape (N,) or broadcastable)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @property
    def pred_area(self) -> np.ndarray:
        return self.tp + self.fp

    @property
    def gt_area(self) -> np.ndarray:
        return self.tp + self.fn


def counts_from_histograms(truth_hist: np.ndarray, all_hist: np.ndarray, level: int,
                           min_area: int = 0) -> Counts:
    """Counts at ``value > level`` with predictions under ``min_area`` pixels emptied.

    The histograms are (N, 256). ``level`` may be an array of shape (T,): the counts then have
    shape (T, N), one row per level.
    """
    tp = _at_level(_above(truth_hist), level)
    area = _at_level(_above(all_hist), level)
    gt_area = truth_hist.sum(axis=-1)
    n_pixels = all_hist.sum(axis=-1)
    kept = area >= np.asarray(min_area)
    tp = np.where(kept, tp, 0)
    area = np.where(kept, area, 0)
    fp = area - tp
    fn = gt_area - tp
    return Counts(tp, fp, fn, n_pixels - tp - fp - fn)


def _at_level(above: np.ndarray, level: int | np.ndarray) -> np.ndarray:
    """Pixels above ``level`` for each image: shape ``level.shape + (N,)``."""
    return np.moveaxis(above[:, np.asarray(level) + 1], 0, -1)


def _above(hist: np.ndarray) -> np.ndarray:
    """above[..., k] = number of pixels with value >= k, for k in 0..256."""
    suffix = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([suffix, np.zeros(hist.shape[:-1] + (1,), dtype=hist.dtype)], axis=-1)


def dice(counts: Counts) -> np.ndarray:
    """Per-image Dice, 1 when prediction and ground truth are both empty (Kaggle's rule)."""
    denom = 2 * counts.tp + counts.fp + counts.fn
    return np.where(denom == 0, 1.0, 2 * counts.tp / np.maximum(denom, 1))


def iou(counts: Counts) -> np.ndarray:
    """Per-image IoU, 1 when both are empty."""
    denom = counts.tp + counts.fp + counts.fn
    return np.where(denom == 0, 1.0, counts.tp / np.maximum(denom, 1))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def pixel_auc(truth_hist: np.ndarray, all_hist: np.ndarray) -> float:
    """Exact ROC AUC over pooled pixels (ties count one half), from summed histograms."""
    pos = truth_hist.reshape(-1, N_LEVELS).sum(axis=0).astype(np.float64)
    neg = all_hist.reshape(-1, N_LEVELS).sum(axis=0).astype(np.float64) - pos
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def summarize(counts: Counts, truth_hist: np.ndarray | None = None,
              all_hist: np.ndarray | None = None) -> dict[str, float | int]:
    """The summary figures over a set of images (see docs/score.md for each definition)."""
    d = dice(counts)
    gt_present = counts.gt_area > 0
    pred_present = counts.pred_area > 0
    tp, fp, fn, tn = (int(x.sum()) for x in (counts.tp, counts.fp, counts.fn, counts.tn))
    summary: dict[str, float | int] = {
        "images": int(d.size),
        "dice": float(d.mean()) if d.size else float("nan"),
        "iou": float(iou(counts).mean()) if d.size else float("nan"),
        "dice_on_positive": float(d[gt_present].mean()) if gt_present.any() else float("nan"),
        "dice_on_empty": float(d[~gt_present].mean()) if (~gt_present).any() else float("nan"),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "presence_tp": int((gt_present & pred_present).sum()),
        "presence_fp": int((~gt_present & pred_present).sum()),
        "presence_fn": int((gt_present & ~pred_present).sum()),
        "presence_tn": int((~gt_present & ~pred_present).sum()),
    }
    if truth_hist is not None and all_hist is not None:
        summary["auc"] = pixel_auc(truth_hist, all_hist)
    return summary


MAX_SWEEP_VALUES = 10_000  # a sweep grid's side; each value scores every image once


def frange(spec: str, name: str, integer: bool = False) -> np.ndarray:
    """Parse ``start:stop:step`` (stop included) or a single value."""
    try:
        parts = [float(p) for p in spec.split(":")]
    except ValueError:
        raise NervesegError(f"{name} {spec!r} is not START:STOP:STEP") from None
    if not all(np.isfinite(parts)):
        raise NervesegError(f"{name} {spec!r}: START, STOP and STEP must be finite numbers")
    if len(parts) == 1:
        parts = [parts[0], parts[0], 1.0]
    if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
        raise NervesegError(f"{name} {spec!r} is not START:STOP:STEP with STEP > 0 and "
                            "STOP >= START")
    start, stop, step = parts
    count = (stop - start) / step
    if count >= MAX_SWEEP_VALUES:
        raise NervesegError(f"{name} {spec!r} makes {count:.0f} values; at most "
                            f"{MAX_SWEEP_VALUES} (use a larger STEP)")
    n = int(np.floor(count + 1e-9)) + 1
    values = start + step * np.arange(n)
    return np.round(values).astype(np.int64) if integer else np.round(values, 10)


# --------------------------------------------------------------------------------------------
# scoring a prediction set against ground truth


@dataclass
class ScoreReport:
    ids: list[str]
    subjects: list[str]
    counts: Counts
    truth_hist: np.ndarray
    all_hist: np.ndarray
    post: PostProcess
    probabilities: bool
    missing_predictions: list[str] = field(default_factory=list)
    sweep: Sweep | None = None
    gated: set[str] = field(default_factory=set)  # predictions emptied by presence gating
    pred_source: MapSource | None = None  # where the maps came from (for overlays)
    gt_source: MapSource | None = None
    label: int | None = None

    @property
    def dice(self) -> np.ndarray:
        return dice(self.counts)

    @property
    def summary(self) -> dict[str, float | int]:
        result = summarize(self.counts, *((self.truth_hist, self.all_hist)
                                          if self.probabilities else ()))
        result["threshold"] = self.post.threshold
        result["min_area"] = self.post.min_area
        result["missing_predictions"] = len(self.missing_predictions)
        return result

    def per_image(self):
        import pandas as pd

        c = self.counts
        return pd.DataFrame({
            "id": self.ids, "subject": self.subjects,
            "dice": self.dice, "iou": iou(c),
            "gt_area": c.gt_area, "pred_area": c.pred_area,
            "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn,
        })

    def by_subject(self):
        table = self.per_image()
        table["gt_present"] = table["gt_area"] > 0
        table["pred_present"] = table["pred_area"] > 0
        grouped = table.groupby("subject", sort=False)
        result = grouped.agg(images=("id", "size"), dice=("dice", "mean"),
                             positives=("gt_present", "sum"),
                             predicted=("pred_present", "sum")).reset_index()
        from nerveseg_cli.io.datasets import id_sort_key

        return result.sort_values("subject", key=lambda s: s.map(id_sort_key),
                                  ignore_index=True)


def match_ids(pred: MapSource | ClassSource, gt: MapSource | ClassSource,
              allow_missing: bool) -> tuple[list[str], list[str]]:
    """The ids to score (the ground truth's) and those without a prediction; ids on either
    side only are an error unless ``allow_missing`` (predictions without ground truth are
    then ignored, with a warning). No ground truth at all is an error first: --allow-missing
    could not help."""
    if not gt.ids:
        raise NervesegError(f"{gt.path}: no ground-truth images to score")
    pred_ids, gt_ids = set(pred.ids), set(gt.ids)
    only_gt = sort_ids(gt_ids - pred_ids)
    only_pred = sort_ids(pred_ids - gt_ids)
    if (only_gt or only_pred) and not allow_missing:
        parts = []
        if only_gt:
            parts.append(f"{len(only_gt)} ground-truth ids have no prediction "
                         f"(first: {', '.join(only_gt[:5])})")
        if only_pred:
            parts.append(f"{len(only_pred)} predictions have no ground truth "
                         f"(first: {', '.join(only_pred[:5])})")
        raise NervesegError(f"{pred.path} vs {gt.path}: {'; '.join(parts)}; pass "
                            "--allow-missing to score missing predictions as empty")
    if only_pred:
        warn(f"{pred.path}: {len(only_pred)} predictions have no ground truth and are ignored")
    return gt.ids, only_gt


def score(pred: str | Path, gt: str | Path, *, threshold: float | None = None,
          min_area: int | None = None, postprocess: str | Path | None = None,
          size: tuple[int, int] = (580, 420), label: int | None = None,
          allow_missing: bool = False, subject_regex: str | None = None,
          sweep_thresholds: str | None = None, sweep_min_areas: str | None = None,
          presence_threshold: float | None = None, presence_from: str | Path | None = None,
          workers: int = 4, progress: Callable[[int], None] | None = None) -> ScoreReport:
    """``nerveseg score``: compare a prediction set with ground truth, image by image.

    (Keyword options, one per ``nerveseg score`` flag, as every command's function has.)"""
    post = resolve_postprocess(threshold, min_area, postprocess)
    pred_source = open_source(pred, size, subject_regex)
    pred_source.gate_by_presence(presence_threshold, presence_from)
    gt_source = open_source(gt, size, subject_regex)
    ids, missing = match_ids(pred_source, gt_source, allow_missing)
    missing_set = set(missing)
    reader = MaskReader(label, str(gt))
    # Palette-PNG predictions are label maps too; an empty prediction set is no error, so this
    # reader is never finished.
    pred_reader = MaskReader(label, str(pred))

    def histograms(sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        truth = gt_source.read_mask(sample_id, reader)
        if sample_id in missing_set:
            values = np.zeros(truth.shape, dtype=np.uint8)
        else:
            values = pred_source.read_values(sample_id, pred_reader)
            if values.shape != truth.shape:
                raise NervesegError(
                    f"{pred_source.files.get(sample_id, pred_source.path)}: prediction is "
                    f"{values.shape[1]}x{values.shape[0]} but the ground truth of "
                    f"{sample_id} is {truth.shape[1]}x{truth.shape[0]}")
        result = value_histograms(values, truth)
        if progress:
            progress(1)
        return result

    pairs = list(thread_map(histograms, ids, workers))
    reader.finish()
    truth_hist = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, N_LEVELS), np.int64)
    all_hist = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, N_LEVELS), np.int64)
    counts = counts_from_histograms(truth_hist, all_hist, threshold_level(post.threshold),
                                    post.min_area)
    intermediate = np.any(all_hist[:, 1:N_LEVELS - 1] > 0)
    report = ScoreReport(ids, [gt_source.subjects[i] for i in ids], counts, truth_hist,
                         all_hist, post, bool(intermediate or pred_source.has_prediction_json),
                         missing, gated=pred_source.gated, pred_source=pred_source,
                         gt_source=gt_source, label=label)
    if sweep_thresholds or sweep_min_areas:
        report.sweep = sweep(truth_hist, all_hist,
                             frange(sweep_thresholds, "--sweep-threshold")
                             if sweep_thresholds else np.array([post.threshold]),
                             min_area_grid(sweep_min_areas)
                             if sweep_min_areas else np.array([post.min_area]))
    return report


def min_area_grid(spec: str) -> np.ndarray:
    areas = frange(spec, "--sweep-min-area", integer=True)
    if areas.min() < 0:
        raise NervesegError(f"--sweep-min-area {spec!r}: areas are pixel counts, >= 0")
    return areas


def sweep(truth_hist: np.ndarray, all_hist: np.ndarray, thresholds: Sequence[float],
          min_areas: Sequence[int]) -> Sweep:
    """Mean Dice for every (threshold, min_area) pair, vectorised over the whole grid."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    min_areas = np.asarray(min_areas, dtype=np.int64)
    levels = np.array([threshold_level(t) for t in thresholds])
    grid = np.empty((thresholds.size, min_areas.size))
    for j, area in enumerate(min_areas):  # one vectorised pass per min-area value
        grid[:, j] = dice(counts_from_histograms(truth_hist, all_hist, levels,
                                                 int(area))).mean(axis=-1)
    return Sweep(thresholds, min_areas, grid)


# --------------------------------------------------------------------------------------------
# outputs


@dataclass(frozen=True)
class ScoreOutputs:
    """Where ``nerveseg score`` writes; each is optional (docs/formats.md, "Score outputs")."""

    out: Path | None = None  # per_image.csv, summary.json, subjects.csv, sweep.csv
    by_subject: bool = False
    postprocess: Path | None = None  # a sweep's best pair, as postprocess.json
    overlays: Path | None = None  # overlay PNGs, drawn on the images of ``images``
    images: Path | None = None
    worst: int | None = None  # only the N lowest-Dice images

    def check(self, inputs: Sequence[str | Path], overwrite: bool) -> None:
        """Refuse the outputs before the scoring pass (nothing is written)."""
        if self.overlays is not None and self.images is None:
            raise NervesegError("--overlays needs --images (the image set to draw on)")
        Outputs.preflight([*inputs, self.images], folders=[self.out, self.overlays],
                          files=[self.postprocess], overwrite=overwrite)


def write_score_outputs(report: ScoreReport, targets: ScoreOutputs, *,
                        overwrite: bool = False, workers: int = 4) -> list[Path]:
    """Write every output ``targets`` names, all of them or (on an error) none."""
    inputs = [*report.pred_source.input_paths(), *report.gt_source.input_paths(),
              targets.images]
    written: list[Path] = []
    with Outputs(inputs=inputs) as outputs:
        if targets.out is not None:
            folder = outputs.folder(targets.out, overwrite=overwrite)
            written += [targets.out / f.name for f in
                        write_outputs(report, folder, by_subject=targets.by_subject)]
        if report.sweep is not None and targets.postprocess is not None:
            file = outputs.file(targets.postprocess, overwrite=overwrite)
            write_postprocess(report.sweep, file, str(report.pred_source.path), True)
            written.append(targets.postprocess)
        if targets.overlays is not None and targets.images is not None:
            folder = outputs.folder(targets.overlays, overwrite=overwrite)
            written += [targets.overlays / f.name for f in
                        write_overlays(report, targets.images, folder, worst=targets.worst,
                                       workers=workers)]
    return written


def write_outputs(report: ScoreReport, out: Path, *, by_subject: bool = False) -> list[Path]:
    """Write per_image.csv, summary.json (and subjects.csv, sweep.csv) into the folder
    ``out``."""
    written = [out / "per_image.csv", out / "summary.json"]
    atomic_write_text(written[0], report.per_image().to_csv(index=False, float_format="%.6f"))
    atomic_write_text(written[1], json_text(report.summary))
    if by_subject:
        written.append(out / "subjects.csv")
        atomic_write_text(written[-1], report.by_subject().to_csv(index=False,
                                                                  float_format="%.6f"))
    if report.sweep is not None:
        written.append(out / "sweep.csv")
        atomic_write_text(written[-1], sweep_csv(report.sweep))
    return written


def sweep_csv(result: Sweep) -> str:
    lines = ["threshold,min_area,dice"]
    for i, t in enumerate(result.thresholds):
        for j, a in enumerate(result.min_areas):
            lines.append(f"{t:g},{a},{result.mean_dice[i, j]:.6f}")
    return "\n".join(lines) + "\n"


def write_overlays(report: ScoreReport, images: str | Path, out: Path, *,
                   worst: int | None = None, workers: int = 4) -> list[Path]:
    """Overlay PNGs (``RANK_ID.png``, worst first) in the folder ``out`` for the ``worst``
    lowest-Dice images (all without), drawn on the images of the set ``images``."""
    pred_source, gt_source = report.pred_source, report.gt_source
    truth_reader = MaskReader(report.label, str(gt_source.path))  # checked by score()
    pred_reader = MaskReader(report.label, str(pred_source.path))
    missing = set(report.missing_predictions)

    def read(sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        truth = gt_source.read_mask(sample_id, truth_reader)
        pred = (np.zeros_like(truth) if sample_id in missing
                else report.post.apply(pred_source.read_values(sample_id, pred_reader)))
        return truth, pred

    return write_ranked_overlays(report.ids, report.dice, images, out, read, overlay,
                                 worst=worst, workers=workers, truth_name="mask")


def write_ranked_overlays(ids: Sequence[str], dice: np.ndarray, images: str | Path, out: Path,
                          read: Callable[[str], tuple[np.ndarray, np.ndarray]],
                          paint: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                          *, worst: int | None, workers: int, truth_name: str) -> list[Path]:
    """``RANK_ID.png`` overlays of the ``worst`` lowest-``dice`` ids (all without; ties in
    id order): ``read(id)`` gives (truth, prediction), ``paint(image, truth, prediction)``
    the picture (binary outlines, or a colour per class)."""
    image_files = {s.id: s for s in discover_images(images)}
    order = np.lexsort((np.arange(len(ids)), dice))
    chosen = [ids[i] for i in order[: worst if worst is not None else len(order)]]
    absent = [i for i in chosen if i not in image_files]
    if absent:
        raise NervesegError(f"{images}: no image for {len(absent)} scored ids "
                            f"(first: {', '.join(absent[:5])})")
    width = len(str(len(chosen)))

    def draw(item: tuple[int, str]) -> Path:
        rank, sample_id = item
        image = load_image(image_files[sample_id])
        truth, pred = read(sample_id)
        if image.shape != truth.shape:
            raise NervesegError(f"{image_files[sample_id].image}: image is "
                                f"{image.shape[1]}x{image.shape[0]}, its {truth_name} "
                                f"{truth.shape[1]}x{truth.shape[0]}")
        path = out / f"{rank:0{width}d}_{sample_id}.png"
        write_image(path, paint(image, truth, pred))
        return path

    return list(thread_map(draw, list(enumerate(chosen, start=1)), workers))

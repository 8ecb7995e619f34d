"""``nerveseg score`` with several classes: the Kaggle metric per image and class, and what a
multi-class task adds (Severstal's mean over image-class pairs, seed 003's mean IoU over
classes, the pixel confusion matrix between classes).

Each class is scored exactly as a binary task (:mod:`nerveseg_cli.evaluation.score`: its own
histograms, counts, summary and sweep); the truth of class k is the ground-truth label map's pixels
equal to k (a multi-class CSV's or class folder's own class-k mask, so overlapping classes score as
Kaggle scores them), the prediction its class-k map. The confusion matrix compares label maps: the
ground truth's, and the prediction's made by :func:`~nerveseg_cli.evaluation.postprocess.label_map`
from the post-processed class maps.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.drawing import class_overlay
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import (
    PostProcess,
    label_map,
    resolve_class_posts,
    threshold_level,
)
from nerveseg_cli.evaluation.score import (
    N_LEVELS,
    ScoreOutputs,
    ScoreReport,
    counts_from_histograms,
    frange,
    match_ids,
    min_area_grid,
    sweep,
    value_histograms,
    write_ranked_overlays,
)
from nerveseg_cli.io.outputs import Outputs, atomic_write_text
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.probmaps import is_class_folder
from nerveseg_cli.io.sources import ClassSource, open_class_source
from nerveseg_cli.records import json_text


@dataclass
class ClassScoreReport:
    """One :class:`ScoreReport` per foreground class over the same images, and the pixel
    confusion matrix between all classes (rows: truth, columns: prediction)."""

    classes: Classes
    reports: dict[str, ScoreReport]
    confusion: np.ndarray  # (C, C) int64
    pred_source: ClassSource | None = None
    gt_source: ClassSource | None = None
    posts: dict[str, PostProcess] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return next(iter(self.reports.values())).ids

    def iou_by_class(self) -> np.ndarray:
        """(C,) pooled IoU of each class (background first) from the confusion matrix."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    @property
    def summary(self) -> dict[str, Any]:
        per_class = {name: report.summary for name, report in self.reports.items()}
        dice = np.array([s["dice"] for s in per_class.values()])
        iou = self.iou_by_class()
        return {
            "images": len(self.ids), "classes": list(self.classes.names),
            # every class has the same images, so the mean over classes of each class's mean
            # is the mean over (image, class) pairs: Severstal's metric
            "dice": float(dice.mean()),
            "mean_iou": float(np.nanmean(iou[1:])) if np.isfinite(iou[1:]).any()
            else float("nan"),
            "mean_iou_with_background": float(np.nanmean(iou)),
            "pixel_accuracy": float(np.trace(self.confusion) / max(1, self.confusion.sum())),
            "by_class": {name: {**summary, "pooled_iou": float(iou[k + 1])}
                         for k, (name, summary) in enumerate(per_class.items())},
            "confusion": self.confusion.tolist(),
        }

    def per_image(self):  # noqa: ANN201  (a pandas DataFrame; pandas loads lazily)
        return self._stacked(lambda report: report.per_image(), column=2)

    def by_subject(self):  # noqa: ANN201
        return self._stacked(lambda report: report.by_subject(), column=1)

    def _stacked(self, table_of: Callable[[ScoreReport], Any], column: int):  # noqa: ANN202
        """Each class's binary table with a ``class`` column inserted at ``column``, stacked."""
        import pandas as pd

        tables = []
        for name, report in self.reports.items():
            table = table_of(report)
            table.insert(column, "class", name)
            tables.append(table)
        return pd.concat(tables, ignore_index=True)


def score_classes(pred: str | Path, gt: str | Path, *, classes: Classes | None = None,
                  threshold: float | None = None, min_area: int | None = None,
                  postprocess: str | Path | None = None,
                  size: tuple[int, int] = (580, 420), allow_missing: bool = False,
                  subject_regex: str | None = None, sweep_thresholds: str | None = None,
                  sweep_min_areas: str | None = None, workers: int = 4,
                  progress: Callable[[int], None] | None = None) -> ClassScoreReport:
    """Score predictions of several classes against label maps (or a multi-class CSV).

    The classes are the prediction folder's (classes.json) or ``classes``; threshold and min
    area apply to every class, a postprocess.json per class or to all. (Keyword options, one
    per flag of ``nerveseg score``, as every command's function has.)"""
    pred_source = open_class_source(pred, classes, size, subject_regex)
    classes = pred_source.classes
    # a ground-truth folder of several classes has its own classes.json: compared below, so
    # that a mismatch names both folders (not --classes, which may not have been given)
    gt_is_folder = Path(gt).is_dir() and is_class_folder(gt)
    gt_source = open_class_source(gt, None if gt_is_folder else classes, size, subject_regex)
    if gt_source.kind != "labels":
        gt_source.classes.check_same(classes, str(gt), str(pred))
    posts = resolve_class_posts(classes.foreground, threshold, min_area, postprocess)
    ids, missing = match_ids(pred_source, gt_source, allow_missing)
    pairs = list(thread_map(_Pair(pred_source, gt_source, set(missing), posts, progress),
                            ids, workers))
    confusion = sum((p[2] for p in pairs), np.zeros((classes.count,) * 2, np.int64))
    reports = {}
    for k, name in enumerate(classes.foreground):
        truth_hist = np.stack([p[0][k] for p in pairs])
        all_hist = np.stack([p[1][k] for p in pairs])
        post = posts[name]
        counts = counts_from_histograms(truth_hist, all_hist, threshold_level(post.threshold),
                                        post.min_area)
        intermediate = bool(np.any(all_hist[:, 1:N_LEVELS - 1] > 0))
        report = ScoreReport(ids, [gt_source.subjects[i] for i in ids], counts, truth_hist,
                             all_hist, post, intermediate or pred_source.has_prediction_json,
                             missing)
        if sweep_thresholds or sweep_min_areas:
            report.sweep = sweep(truth_hist, all_hist,
                                 frange(sweep_thresholds, "--sweep-threshold")
                                 if sweep_thresholds else np.array([post.threshold]),
                                 min_area_grid(sweep_min_areas)
                                 if sweep_min_areas else np.array([post.min_area]))
        reports[name] = report
    return ClassScoreReport(classes, reports, confusion, pred_source, gt_source, posts)


class _Pair:
    """Reads one image's truth and prediction and returns, per class, the two histograms of
    the score, and the image's confusion matrix."""

    def __init__(self, pred: ClassSource, gt: ClassSource, missing: set[str],
                 posts: dict[str, PostProcess],
                 progress: Callable[[int], None] | None) -> None:
        self.pred, self.gt, self.missing = pred, gt, missing
        self.posts = [posts[name] for name in pred.classes.foreground]
        self.progress = progress

    def __call__(self, sample_id: str) -> tuple[list[np.ndarray], list[np.ndarray],
                                                 np.ndarray]:
        truth = self.gt.read_labels(sample_id)
        if self.pred.kind == "labels" and self.gt.kind == "labels" \
                and sample_id not in self.missing:
            result = self._label_maps(truth, self._predicted_labels(sample_id, truth))
        else:
            result = self._maps(sample_id, truth)
        if self.progress:
            self.progress(1)
        return result

    def _predicted_labels(self, sample_id: str, truth: np.ndarray) -> np.ndarray:
        predicted = self.pred.read_labels(sample_id)
        if predicted.shape != truth.shape:
            raise NervesegError(f"{self.pred.path}: prediction of {sample_id} is "
                                f"{predicted.shape[1]}x{predicted.shape[0]} but its ground "
                                f"truth is {truth.shape[1]}x{truth.shape[0]}")
        return predicted

    def _maps(self, sample_id: str, truth: np.ndarray) -> tuple[list[np.ndarray],
                                                                 list[np.ndarray], np.ndarray]:
        count = self.pred.classes.count
        if sample_id in self.missing:
            values = np.zeros((count - 1, *truth.shape), dtype=np.uint8)
        else:
            values = self.pred.read_values(sample_id)
            if values.shape[1:] != truth.shape:
                raise NervesegError(f"{self.pred.path}: prediction of {sample_id} is "
                                    f"{values.shape[2]}x{values.shape[1]} but its ground "
                                    f"truth is {truth.shape[1]}x{truth.shape[0]}")
        # each class's own truth: a CSV's (or a class folder's) classes may overlap, which
        # its label map cannot show
        own = None if self.gt.kind == "labels" else self.gt.read_values(sample_id) > 127
        hists = [value_histograms(values[k], truth == k + 1 if own is None else own[k])
                 for k in range(count - 1)]
        confusion = confusion_matrix(truth, label_map(values, self.posts), count)
        return [h[0] for h in hists], [h[1] for h in hists], confusion

    def _label_maps(self, truth: np.ndarray, predicted: np.ndarray
                    ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Label maps on both sides: every figure follows from the confusion matrix (a class's
        map is 0/255, so its histograms have two bins), several times faster than maps."""
        count = self.pred.classes.count
        confusion = confusion_matrix(truth, predicted, count)
        truth_hists, all_hists = [], []
        for k in range(1, count):
            tp, area, gt_area = confusion[k, k], confusion[:, k].sum(), confusion[k].sum()
            on_truth, everything = np.zeros((2, N_LEVELS), np.int64)
            on_truth[[0, 255]] = gt_area - tp, tp
            everything[[0, 255]] = truth.size - area, area
            truth_hists.append(on_truth)
            all_hists.append(everything)
        areas = confusion.sum(axis=0)
        dropped = [k for k, post in enumerate(self.posts, start=1) if areas[k] and (
            threshold_level(post.threshold) >= 255 or areas[k] < post.min_area)]
        if dropped:  # post-processing empties these classes: the confusion matrix shows it
            kept = np.where(np.isin(predicted, dropped), 0, predicted).astype(np.uint8)
            confusion = confusion_matrix(truth, kept, count)
        return truth_hists, all_hists, confusion


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, count: int) -> np.ndarray:
    """(count, count) pixel counts: true class (rows) by predicted class (columns)."""
    codes = truth.astype(np.uint16) * np.uint16(count) + predicted  # count <= 255
    return np.bincount(codes.ravel(), minlength=count * count).reshape(count, count)


# --------------------------------------------------------------------------------------------
# outputs


def class_table_csv(report: ClassScoreReport) -> str:
    """classes.csv (``--by class``): one row per class with its main figures."""
    summary = report.summary
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = ("dice", "iou", "pooled_iou", "precision", "recall", "specificity", "auc")
    writer.writerow(["class", *keys])
    for name, figures in summary["by_class"].items():
        writer.writerow([name, *(_number(figures.get(k)) for k in keys)])
    return buffer.getvalue()


def confusion_csv(report: ClassScoreReport) -> str:
    """confusion.csv: pixels by true class (rows) and predicted class (columns)."""
    names = report.classes.names
    lines = [",".join(["truth\\predicted", *names])]
    for name, row in zip(names, report.confusion, strict=True):
        lines.append(",".join([name, *map(str, row.tolist())]))
    return "\n".join(lines) + "\n"


def sweep_rows(report: ClassScoreReport) -> list[tuple[str, float, int, float]]:
    """(class, threshold, min area, mean Dice) for every sweep cell of every class."""
    rows = []
    for name, class_report in report.reports.items():
        result = class_report.sweep
        for i, t in enumerate(result.thresholds):
            for j, a in enumerate(result.min_areas):
                rows.append((name, float(t), int(a), float(result.mean_dice[i, j])))
    return rows


def _number(value: Any) -> str:
    return "" if value is None or value != value else f"{float(value):.6f}"


def best_posts(report: ClassScoreReport) -> dict[str, dict[str, float]]:
    """Each class's best (threshold, min area, mean Dice) of its sweep."""
    best = {}
    for name, class_report in report.reports.items():
        threshold, area, dice_value = class_report.sweep.best
        best[name] = {"threshold": threshold, "min_area": area, "mean_dice": dice_value}
    return best


def write_class_score_outputs(report: ClassScoreReport, targets: ScoreOutputs, *,
                              overwrite: bool = False, workers: int = 4) -> list[Path]:
    """The outputs of a multi-class score, all or none: in ``targets.out`` per_image.csv (a
    row per image and class), summary.json, classes.csv, confusion.csv, subjects.csv (by
    subject), sweep.csv; the sweep's postprocess.json per class; overlays."""
    inputs = [*report.pred_source.input_paths(), *report.gt_source.input_paths(),
              targets.images]
    written: list[Path] = []
    with Outputs(inputs=inputs) as outputs:
        if targets.out is not None:
            folder = outputs.folder(targets.out, overwrite=overwrite)
            written += [targets.out / f.name for f in
                        _write_tables(report, folder, targets.by_subject)]
        if _swept(report) and targets.postprocess is not None:
            file = outputs.file(targets.postprocess, overwrite=overwrite)
            write_class_postprocess(report, file)
            written.append(targets.postprocess)
        if targets.overlays is not None and targets.images is not None:
            folder = outputs.folder(targets.overlays, overwrite=overwrite)
            written += [targets.overlays / f.name for f in
                        write_class_overlays(report, targets.images, folder,
                                             worst=targets.worst, workers=workers)]
    return written


def _swept(report: ClassScoreReport) -> bool:
    return all(r.sweep is not None for r in report.reports.values())


def _write_tables(report: ClassScoreReport, out: Path, by_subject: bool) -> list[Path]:
    files = {"per_image.csv": report.per_image().to_csv(index=False, float_format="%.6f"),
             "summary.json": json_text(report.summary),
             "classes.csv": class_table_csv(report),
             "confusion.csv": confusion_csv(report)}
    if by_subject:
        files["subjects.csv"] = report.by_subject().to_csv(index=False, float_format="%.6f")
    if _swept(report):
        files["sweep.csv"] = "class,threshold,min_area,dice\n" + "".join(
            f"{name},{t:g},{a},{d:.6f}\n" for name, t, a, d in sweep_rows(report))
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return [out / name for name in files]


def write_class_postprocess(report: ClassScoreReport, path: Path) -> None:
    """postprocess.json of several classes: each class's best sweep cell."""
    best = best_posts(report)
    atomic_write_text(path, json_text({
        "classes": best,
        "mean_dice": float(np.mean([b["mean_dice"] for b in best.values()])),
        "chosen_from": str(report.pred_source.path),
    }))


def write_class_overlays(report: ClassScoreReport, images: str | Path, out: Path, *,
                         worst: int | None = None, workers: int = 4) -> list[Path]:
    """Overlay PNGs (``RANK_ID.png``, lowest mean Dice over the classes first), a colour per
    class (drawing.class_overlay)."""
    mean_dice = np.mean([r.dice for r in report.reports.values()], axis=0)
    posts = [report.posts[name] for name in report.classes.foreground]

    def read(sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        return (report.gt_source.read_labels(sample_id),
                label_map(report.pred_source.read_values(sample_id), posts))

    return write_ranked_overlays(report.ids, mean_dice, images, out, read, class_overlay,
                                 worst=worst, workers=workers, truth_name="label map")

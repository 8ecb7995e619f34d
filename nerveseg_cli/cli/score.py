"""``nerveseg score``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from nerveseg_cli.cli._app import PANEL_SUBMIT, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Label,
    MinArea,
    Overwrite,
    PostprocessFile,
    PresenceFrom,
    PresenceThreshold,
    Size,
    SubjectRegex,
    Threshold,
    Workers,
    format_value,
    key_value_table,
    out_option,
    print_json,
    print_whole,
    progress_bar,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from nerveseg_cli.classes import Classes
    from nerveseg_cli.evaluation.postprocess import Sweep
    from nerveseg_cli.evaluation.score import ScoreOutputs, ScoreReport
    from nerveseg_cli.evaluation.score_classes import ClassScoreReport


SUMMARY_LABELS = {
    "images": "images", "dice": "Kaggle mean Dice", "iou": "mean IoU",
    "dice_on_positive": "mean Dice, nerve images", "dice_on_empty": "mean Dice, empty images",
    "precision": "pixel precision", "recall": "pixel recall", "specificity": "pixel specificity",
    "pixel_accuracy": "pixel accuracy", "auc": "pixel AUC",
    "presence_tp": "presence TP", "presence_fp": "presence FP",
    "presence_fn": "presence FN", "presence_tn": "presence TN",
    "threshold": "threshold", "min_area": "min area",
    "missing_predictions": "missing predictions (scored empty)",
}


# One parameter per option: this is Typer's declaration of the command line.
@command("score", PANEL_SUBMIT)
def score_command(
    pred: Annotated[Path, typer.Argument(
        help="Predictions: mask set, probability folder or Kaggle CSV.")],
    gt: Annotated[Path, typer.Argument(
        help="Ground truth: mask set, manifest or Kaggle train CSV.")],
    out: Annotated[Path | None, out_option(
        help="Folder for per_image.csv and summary.json.")] = None,
    threshold: Threshold = None,
    min_area: MinArea = None,
    postprocess: PostprocessFile = None,
    size: Size = "580x420",
    label: Label = None,
    classes: ClassesOption = None,
    by: Annotated[str | None, typer.Option(
        "--by", help="'subject' adds a per-subject table; 'class' (several classes) a "
        "per-class one.")] = None,
    subject_regex: SubjectRegex = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Score ground-truth ids without a prediction as empty.")
    ] = False,
    sweep_threshold: Annotated[str | None, typer.Option(
        "--sweep-threshold", help="Grid of thresholds START:STOP:STEP, e.g. 0.3:0.7:0.05.")
    ] = None,
    sweep_min_area: Annotated[str | None, typer.Option(
        "--sweep-min-area", help="Grid of min areas START:STOP:STEP, e.g. 0:5000:250.")
    ] = None,
    postprocess_out: Annotated[Path | None, typer.Option(
        "--postprocess-out", help="Where a sweep writes its best pair. \\[default: "
        "OUT/postprocess.json, or ./postprocess.json without --out]")] = None,
    overlays: Annotated[Path | None, typer.Option(
        "--overlays", help="Folder for overlay PNGs (needs --images).")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="Image set the overlays are drawn on.")] = None,
    worst: Annotated[int | None, typer.Option(
        "--worst", min=1, help="Only overlay the N lowest-Dice images.")] = None,
    presence_threshold: PresenceThreshold = None,
    presence_from: PresenceFrom = None,
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Score predictions against ground truth exactly as Kaggle does, with the details."""
    from nerveseg_cli.classes import parse_classes
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.evaluation.score import ScoreOutputs, score, write_score_outputs
    from nerveseg_cli.io.images import parse_size
    from nerveseg_cli.io.sources import is_multiclass

    declared = parse_classes(classes)
    multiclass = is_multiclass(pred, declared)
    if by not in (None, "subject", "class") or (by == "class" and not multiclass):
        raise NervesegError(f"--by {by!r}: use subject" + (", or class" if multiclass else
                                                             " (class needs several classes)"))
    dims = parse_size(size)
    sweeping = bool(sweep_threshold or sweep_min_area)
    targets = ScoreOutputs(
        out=out, by_subject=by == "subject", overlays=overlays, images=images, worst=worst,
        postprocess=(postprocess_out or (out / "postprocess.json" if out else
                                         Path("postprocess.json"))) if sweeping else None)
    # Refuse unusable outputs before the (possibly long) scoring pass.
    targets.check([pred, gt, postprocess, presence_from], overwrite)
    if multiclass:
        _score_classes(pred, gt, declared, targets, threshold, min_area, postprocess, dims,
                       label, presence_threshold, presence_from, allow_missing, subject_regex,
                       sweep_threshold, sweep_min_area, overwrite, workers, json_output)
        return
    with progress_bar(None, "score") as advance:
        report = score(pred, gt, threshold=threshold, min_area=min_area,
                       presence_threshold=presence_threshold, presence_from=presence_from,
                       postprocess=postprocess, size=dims, label=label,
                       allow_missing=allow_missing, subject_regex=subject_regex,
                       sweep_thresholds=sweep_threshold, sweep_min_areas=sweep_min_area,
                       workers=workers, progress=advance)
    written = write_score_outputs(report, targets, overwrite=overwrite, workers=workers)
    _print_report(report, pred, gt, by == "subject", json_output)
    if written and not json_output:
        stderr.print(f"wrote {len(written)} files (first: {written[0]})", markup=False)


def _print_report(report: ScoreReport, pred: Path, gt: Path, by_subject: bool,
                  json_output: bool) -> None:
    summary = report.summary
    if json_output:
        data: dict = {"summary": summary}
        if by_subject:
            data["subjects"] = report.by_subject().to_dict(orient="records")
        if report.sweep is not None:
            data["sweep"] = _sweep_json(report.sweep)
        print_json(data)
        return
    stdout.print(key_value_table(f"score: {pred} vs {gt}",
                                 {SUMMARY_LABELS[k]: v for k, v in summary.items()}))
    if by_subject:
        stdout.print(_subject_table(report))
    if report.sweep is not None:
        print_whole(_sweep_table(report.sweep))


def _sweep_json(sweep: Sweep) -> dict:
    t, a, d = sweep.best
    return {"best": {"threshold": t, "min_area": a, "dice": d},
            "thresholds": sweep.thresholds.tolist(), "min_areas": sweep.min_areas.tolist(),
            "dice": sweep.mean_dice.tolist()}


def _subject_table(report: ScoreReport, title: str = "by subject") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("subject", "images", "dice", "positives", "predicted"):
        table.add_column(column, justify="left" if column == "subject" else "right")
    for row in report.by_subject().itertuples(index=False):
        table.add_row(str(row.subject), str(row.images), format_value(float(row.dice)),
                      str(row.positives), str(row.predicted))
    return table


def _sweep_table(sweep: Sweep, prefix: str = "") -> Table:
    best_t, best_a, best_d = sweep.best
    # a grid of numbers without rules between columns: 9 thresholds fit 80 columns
    table = Table(title=f"{prefix}mean Dice by min area (rows) and threshold (columns); best "
                        f"{best_d:.4f} at threshold {best_t:g}, min area {best_a}",
                  title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1, 0, 0))
    table.add_column("min area", justify="right")
    for t in sweep.thresholds:
        table.add_column(f"{t:g}", justify="right")
    for j, area in enumerate(sweep.min_areas):
        cells = []
        for i, t in enumerate(sweep.thresholds):
            text = f"{sweep.mean_dice[i, j]:.4f}"
            # a styled Text: the consoles read no markup (user text), so "[bold]" would print
            best = t == best_t and area == best_a
            cells.append(Text(text, style="bold") if best else text)
        table.add_row(str(area), *cells)
    return table


def _score_classes(pred: Path, gt: Path, declared: Classes | None, targets: ScoreOutputs,
                   threshold: float | None, min_area: int | None, postprocess: Path | None,
                   dims: tuple[int, int], label: int | None,
                   presence_threshold: float | None, presence_from: Path | None,
                   allow_missing: bool,
                   subject_regex: str | None, sweep_threshold: str | None,
                   sweep_min_area: str | None, overwrite: bool, workers: int,
                   json_output: bool) -> None:
    """score with several classes (the command's options, passed on as they are)."""
    from nerveseg_cli.classes import refuse_one_class_options
    from nerveseg_cli.evaluation.score_classes import score_classes, write_class_score_outputs

    refuse_one_class_options("scored", label=label, presence_threshold=presence_threshold,
                             presence_from=presence_from)
    with progress_bar(None, "score") as advance:
        report = score_classes(pred, gt, classes=declared, threshold=threshold,
                               min_area=min_area, postprocess=postprocess, size=dims,
                               allow_missing=allow_missing, subject_regex=subject_regex,
                               sweep_thresholds=sweep_threshold,
                               sweep_min_areas=sweep_min_area, workers=workers,
                               progress=advance)
    written = write_class_score_outputs(report, targets, overwrite=overwrite, workers=workers)
    if json_output:
        print_json(_class_json(report, targets.by_subject))
        return
    stdout.print(_class_table(report))
    stdout.print(_confusion_table(report))
    for name, class_report in report.reports.items():
        if targets.by_subject:
            stdout.print(_subject_table(class_report, f"by subject: {name}"))
        if class_report.sweep is not None:
            print_whole(_sweep_table(class_report.sweep, f"{name}: "))
    if written:
        stderr.print(f"wrote {len(written)} files (first: {written[0]})", markup=False)


def _class_json(report: ClassScoreReport, by_subject: bool) -> dict:
    """--json with several classes: the summary, and per class what binary --json holds."""
    data: dict = {"summary": report.summary}
    if by_subject:
        data["subjects"] = report.by_subject().to_dict(orient="records")
    sweeps = {name: _sweep_json(r.sweep) for name, r in report.reports.items()
              if r.sweep is not None}
    if sweeps:
        data["sweep"] = sweeps
    return data


def _class_table(report: ClassScoreReport) -> Table:
    summary = report.summary
    table = Table(title=f"score: {summary['images']} images, {len(report.reports)} classes; "
                  f"mean Dice over (image, class) {format_value(summary['dice'])}, mean IoU "
                  f"{format_value(summary['mean_iou'])}", title_justify="left")
    # short headers so the table fits 80 columns; classes.csv has the full names
    columns = {"dice": "dice", "iou": "iou", "precision": "prec", "recall": "rec",
               "specificity": "spec", "auc": "auc", "threshold": "thr", "min_area": "area"}
    table.add_column("class")
    for header in columns.values():
        table.add_column(header, justify="right")
    for name, figures in summary["by_class"].items():
        table.add_row(name, *(_short(figures.get(c)) for c in columns))
    return table


def _short(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _confusion_table(report: ClassScoreReport) -> Table:
    table = Table(title="pixels: truth (rows) by prediction (columns)", title_justify="left")
    table.add_column("")
    for name in report.classes.names:
        table.add_column(name, justify="right")
    for name, row in zip(report.classes.names, report.confusion, strict=True):
        table.add_row(name, *map(str, row.tolist()))
    return table

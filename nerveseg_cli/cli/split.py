"""``nerveseg split``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nerveseg_cli.cli._app import PANEL_DATA, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Label,
    Overwrite,
    SubjectRegex,
    Workers,
    out_option,
    print_json,
    progress_bar,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from nerveseg_cli.classes import Classes
    from nerveseg_cli.data.split import FoldRow



class Grouping(str, Enum):
    subject = "subject"
    none = "none"


# One parameter per option: this is Typer's declaration of the command line.
@command("split", PANEL_DATA)
def split_command(
    input: Annotated[Path, typer.Argument(
        help="Image set (Kaggle folder, images/+masks/ folder) or manifest CSV; with --check, "
        "the split manifest to audit.")],
    out: Annotated[Path | None, out_option(
        help="Manifest CSV to write, with a fold column.")] = None,
    folds: Annotated[int | None, typer.Option(
        "--folds", min=2, help="Number of cross-validation folds. \\[default: 5]")] = None,
    holdout: Annotated[float | None, typer.Option(
        "--holdout", min=0.0, max=1.0,
        help="Instead of folds: this fraction of images as validation (fold 0), the rest "
        "train (fold 1).")] = None,
    group: Annotated[Grouping, typer.Option(
        "--group", help="Keep each subject in one fold, or split by image (leaks frames of "
        "a subject across folds).")] = Grouping.subject,
    balance: Annotated[str | None, typer.Option(
        "--balance", metavar="P:N", help="Leave out surplus images so every fold holds "
        "positives and negatives at this ratio (left-out rows get fold -1).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same input and seed, "
                                      "same bytes.")] = 0,
    check: Annotated[bool, typer.Option(
        "--check", help="Audit INPUT, an existing split: exit 1 if a subject or duplicate "
        "group sits in more than one fold.")] = False,
    subject_regex: SubjectRegex = None,
    label: Label = None,
    classes: ClassesOption = None,
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Make cross-validation folds grouped by subject and stratified by nerve presence."""
    from nerveseg_cli.classes import parse_classes
    from nerveseg_cli.errors import NervesegError
    from nerveseg_cli.io.outputs import Outputs

    if check:
        if out is not None or folds is not None or holdout is not None or balance:
            raise NervesegError("--check audits an existing split; it takes no --out, "
                                "--folds, --holdout or --balance")
        _check(input, label, parse_classes(classes), workers, json_output)
        return
    if out is None:
        raise NervesegError("--out is required (the manifest to write), or pass --check to "
                            "audit an existing split")
    if folds is not None and holdout is not None:
        raise NervesegError("choose --folds or --holdout, not both")
    from nerveseg_cli.data.split import split, write_split

    Outputs.preflight([input], files=[out], overwrite=overwrite)
    with progress_bar(None, "split") as advance:
        result = split(input, folds=folds or 5, holdout=holdout, group=group.value,
                       balance=balance, seed=seed, subject_regex=subject_regex, label=label,
                       classes=parse_classes(classes), workers=workers, progress=advance)
    write_split(result, out, overwrite=overwrite)
    summary = result.summary
    if json_output:
        print_json(summary)
        return
    stdout.print(f"split: {input} -> {out} ({summary['method']}, grouped by "
                 f"{summary['group']}, seed {seed})", markup=False, soft_wrap=True)
    stdout.print(_fold_table(result.rows))
    if result.balance is not None:
        stdout.print(f"balance {summary['balance']}: {summary['left_out']} images left out "
                     "(fold -1)", markup=False)


def _check(manifest: Path, label: int | None, classes: Classes | None, workers: int,
           json_output: bool) -> None:
    from nerveseg_cli.data.split import check_split

    with progress_bar(None, "check") as advance:
        report = check_split(manifest, label=label, classes=classes, workers=workers,
                             progress=advance)
    if json_output:
        print_json(report.summary)
    else:
        stdout.print(f"split check: {manifest}", markup=False, soft_wrap=True)
        stdout.print(_fold_table(report.rows))
        if report.leaks:
            table = Table(title=f"leaks: {len(report.leaks)}", title_justify="left")
            for column in ("kind", "name", "folds", "images"):
                table.add_column(column, justify="right" if column == "images" else "left")
            for leak in report.leaks:
                table.add_row(leak.kind, leak.name, ", ".join(map(str, leak.folds)),
                              str(leak.images))
            stdout.print(table)
        else:
            checked = " or ".join("subject" if c == "subject" else "duplicate group"
                                  for c in report.checked)
            stdout.print(f"no leakage: no {checked} sits in more than one fold",
                         markup=False, soft_wrap=True)
        if "dup_group" not in report.checked:
            stderr.print("note: no dup_group column, so duplicate groups were not checked "
                         "(nerveseg dedupe writes one)", markup=False, soft_wrap=True)
    if report.leaky:
        raise typer.Exit(code=1)


def _fold_table(rows: list[FoldRow]) -> Table:
    """One row per fold; with label maps, a "% NAME" column per class."""
    table = Table()
    names = list(rows[0].class_positives or {}) if rows else []
    # with several classes an image is positive when it holds any class; each has its column
    positive = "any class %" if names else "positive %"
    for column in ("fold", "images", "subjects", positive, *(f"% {n}" for n in names),
                   "mean mask area"):
        table.add_column(column, justify="right")
    for row in rows:
        per_class = [f"{100 * row.class_rate(n):.1f}" if row.labelled else "n/a"
                     for n in names]
        table.add_row("left out" if row.fold < 0 else str(row.fold), str(row.images),
                      str(row.subjects),
                      f"{100 * row.positive_rate:.1f}" if row.labelled else "n/a", *per_class,
                      "n/a" if row.mean_area != row.mean_area else f"{row.mean_area:.0f}")
    return table

"""``nerveseg demo``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nerveseg_cli.cli._app import PANEL_PIPELINE, command
from nerveseg_cli.cli._common import (
    JsonOutput,
    Overwrite,
    format_value,
    print_json,
    stderr,
    stdout,
)
from nerveseg_cli.train.progress import EpochRecord, Reporter

if TYPE_CHECKING:
    from nerveseg_cli.workflow.demo import DemoResult, DemoStep


# One parameter per option: this is Typer's declaration of the command line.
@command("demo", PANEL_PIPELINE)
def demo_command(
    out: Annotated[Path, typer.Argument(help="Folder for every intermediate file.")] = Path(
        "nerveseg-demo"),
    size: Annotated[str, typer.Option(help="Synthetic image size WxH.")] = "580x420",
    train_size: Annotated[str, typer.Option(
        help="Network input size WxH (multiples of 32); maps come back at --size.")
    ] = "128x96",
    subjects: Annotated[int, typer.Option(min=2, help="Training subjects.")] = 6,
    per_subject: Annotated[int, typer.Option(min=6, help="Frames per subject.")] = 20,
    test: Annotated[int, typer.Option(min=1, help="Test images.")] = 24,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per fold.")] = 8,
    encoder: Annotated[str, typer.Option(help="Encoder, trained from scratch.")] = "resnet18",
    seed: Annotated[int, typer.Option(help="Seed of the data, the split and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Run the whole pipeline on a fresh synthetic dataset: synth, dedupe, split, train 2 folds,
    predict with TTA, ensemble, CRF, score out of fold, submission.

    Each step is printed as the shell command that does it; every file stays in OUT. Exits 1
    when the trained models do not beat the all-empty submission out of fold."""
    from nerveseg_cli.workflow.demo import parse_settings, run_demo

    settings = parse_settings(size, train_size, subjects=subjects, per_subject=per_subject,
                              test=test, epochs=epochs, encoder=encoder, seed=seed,
                              device=device)
    result = run_demo(out, settings, overwrite=overwrite, on_step=_print_step,
                      fold_reporter=lambda fold: _FoldLines(fold, epochs))
    if json_output:
        record = result.record()
        print_json({"scores": record["scores"], "chosen": result.chosen.name,
                    "beats_empty": result.beats_empty,
                    "summary": result.chosen_report.summary,
                    "fold_val_dice": result.fold_val_dice,
                    "submission": str(result.submission), "rows": result.encoded.rows,
                    "non_empty": result.encoded.non_empty, "seconds": result.seconds,
                    "out": str(result.out)})
    else:
        _print_result(result)
    if not result.beats_empty:
        raise typer.Exit(code=1)


def _print_step(demo_step: DemoStep) -> None:
    if demo_step.note:
        stderr.print(f"# {demo_step.note}", style="dim", markup=False, highlight=False,
                     soft_wrap=True)
    stderr.print(demo_step.command, style="bold cyan", markup=False, highlight=False,
                 soft_wrap=True)


class _FoldLines(Reporter):
    """One dim line per epoch of fold k."""

    def __init__(self, fold: int, epochs: int) -> None:
        self.fold, self.epochs = fold, epochs

    def epoch_end(self, record: EpochRecord, best: bool) -> None:
        stderr.print(f"#   fold {self.fold} epoch {record.epoch}/{self.epochs}: train loss "
                     f"{record.train_loss:.3f}, validation Dice {record.val_dice:.4f} "
                     f"({record.seconds:.1f} s)", style="dim", markup=False, highlight=False)


def _print_result(result: DemoResult) -> None:
    table = Table(title="demo: out-of-fold Kaggle mean Dice", title_justify="left",
                  caption="each training image predicted by the fold model that did not "
                  "train on it; threshold and min area chosen by the sweep",
                  caption_justify="left")
    for column in ("predictions", "threshold", "min area", "Kaggle mean Dice"):
        table.add_column(column, justify="left" if column == "predictions" else "right")
    for line in result.scores:
        chosen = "  <- submitted" if line is result.chosen else ""
        table.add_row(f"{line.name}{chosen}",
                      "-" if line.threshold is None else f"{line.threshold:g}",
                      "-" if line.min_area is None else str(line.min_area),
                      format_value(line.dice))
    stdout.print(table)
    summary = result.chosen_report.summary
    stdout.print(f"{result.chosen.name}: IoU {format_value(summary['iou'])}, Dice on nerve "
                 f"images {format_value(summary['dice_on_positive'])}, on empty images "
                 f"{format_value(summary['dice_on_empty'])}; presence TP "
                 f"{summary['presence_tp']} FP {summary['presence_fp']} FN "
                 f"{summary['presence_fn']} TN {summary['presence_tn']}", markup=False)
    verdict = "beat" if result.beats_empty else "did NOT beat"
    stdout.print(f"trained models {verdict} the all-empty submission: "
                 f"{result.chosen.dice:.4f} vs {result.empty_dice:.4f}")
    stdout.print(f"submission: {result.submission} ({result.encoded.rows} rows, "
                 f"{result.encoded.non_empty} with a nerve)", markup=False)
    stdout.print(f"every intermediate file is in {result.out}/ "
                 f"({result.seconds['total']:.0f} s)", markup=False)

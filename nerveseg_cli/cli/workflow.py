"""``nerveseg workflow init``: a Snakemake project for the whole pipeline (docs/workflow.md)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_PIPELINE, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Overwrite,
    key_value_table,
    print_json,
    stderr,
    stdout,
)


class Action(str, Enum):
    init = "init"


# One parameter per option: this is Typer's declaration of the command line.
@command("workflow", PANEL_PIPELINE)
def workflow_command(
    action: Annotated[Action, typer.Argument(
        metavar="ACTION", help="init: write a ready project into DIR.", show_default=False)],
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", help="Project folder (created; the workflow writes its results there).",
        show_default=False)],
    data: Annotated[Path, typer.Option(
        "--data", help="Kaggle folder (train/, test/, sample_submission.csv), images with "
        "masks (ID + ID_mask, or images/ + masks/) or a manifest CSV.", show_default=False)],
    test: Annotated[Path | None, typer.Option(
        "--test", help="Images to predict and encode. \\[default: DATA/test of a Kaggle "
        "folder, else none]", show_default=False)] = None,
    ids_from: Annotated[Path | None, typer.Option(
        "--ids-from", help="Sample submission fixing the submission's rows. \\[default: "
        "DATA/sample_submission.csv of a Kaggle folder, else none]", show_default=False)
    ] = None,
    classes: ClassesOption = None,
    smoke: Annotated[bool, typer.Option(
        "--smoke", help="Tiny CPU settings (2 folds, 1 epoch, small inputs), as SMOKE=1 "
        "for examples/kaggle.sh.")] = False,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Write a Snakemake project that runs the whole pipeline (dedupe, split, train every fold,
    out-of-fold predictions, score and post-processing, test predictions, ensemble, CRF,
    submission): then `cd DIR && snakemake --cores N`, or --profile profiles/slurm."""
    from nerveseg_cli.workflow.project import init_project

    project = init_project(folder, data, test=test, ids_from=ids_from, classes=classes,
                           smoke=smoke, overwrite=overwrite)
    summary = {"project": str(project.folder),
               **{key: value for key, value in project.settings.items()
                  if not key.startswith("resources.")}}
    if json_output:
        print_json(summary)
        return
    stdout.print(key_value_table("workflow init", summary))
    stderr.print(f"next: cd {project.folder} && snakemake --cores 4 (settings: "
                 "config/config.yaml; docs/workflow.md)", soft_wrap=True)

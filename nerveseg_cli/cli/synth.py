"""``nerveseg synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_DATA, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Overwrite,
    Workers,
    key_value_table,
    print_json,
    progress_bar,
    stdout,
)


# One parameter per option: this is Typer's declaration of the command line.
@command("synth", PANEL_DATA)
def synth_command(
    out: Annotated[Path, typer.Argument(help="Folder to create (Kaggle layout).")],
    subjects: Annotated[int, typer.Option(min=1, help="Training subjects.")] = 6,
    per_subject: Annotated[int, typer.Option(min=1, help="Frames per subject.")] = 20,
    test: Annotated[int, typer.Option(min=0, help="Test images.")] = 24,
    size: Annotated[str, typer.Option(help="Image size WxH.")] = "580x420",
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    classes: ClassesOption = None,
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Make a tiny deterministic Kaggle-layout dataset (tests, demos, smoke runs); with
    --classes 3, label maps of a nerve and a vessel."""
    from nerveseg_cli.classes import parse_classes
    from nerveseg_cli.data.synth import synth
    from nerveseg_cli.io.images import parse_size

    dims = parse_size(size)
    with progress_bar(subjects * per_subject + test, "synth") as advance:
        result = synth(out, subjects=subjects, per_subject=per_subject, test=test, size=dims,
                       seed=seed, classes=parse_classes(classes), overwrite=overwrite,
                       workers=workers, progress=advance)
    summary = {"out": str(result.out), "train_images": result.train_images,
               "with_nerve": result.positives, "test_images": result.test_images,
               "planted_conflicts": len(result.planted)}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("synth", summary))

"""``nerveseg demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_PIPELINE, app
from nerveseg_cli.cli._common import Overwrite, handle_errors, key_value_table, stderr, stdout
from nerveseg_cli.cli.score import SUMMARY_LABELS


@app.command("demo", rich_help_panel=PANEL_PIPELINE)
@handle_errors
def demo_command(
    out: Annotated[Path, typer.Argument(help="Folder for every intermediate file.")] = Path(
        "nerveseg-demo"),
    size: Annotated[str, typer.Option(help="Synthetic image size WxH.")] = "580x420",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic dataset.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Run the whole chain on a fresh synthetic dataset and print the score table."""
    from nerveseg_cli.demo import run_demo
    from nerveseg_cli.io import parse_size

    def step(command: str) -> None:
        stderr.print(f"[bold cyan]>[/bold cyan] {command}", highlight=False)

    result = run_demo(out, size=parse_size(size), seed=seed, overwrite=overwrite, on_step=step)
    stdout.print(key_value_table(
        "demo: decoded masks scored against the synthetic ground truth",
        {SUMMARY_LABELS[k]: v for k, v in result.report.summary.items()}))
    stdout.print(f"RLE round trip byte-identical: {result.round_trip_identical}")
    stdout.print(f"every intermediate file is in {result.out}/")

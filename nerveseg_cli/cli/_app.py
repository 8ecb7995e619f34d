"""The Typer application, its global options, and the entry point."""

from __future__ import annotations

from typing import Annotated

import typer

from nerveseg_cli import __version__
from nerveseg_cli.cli._common import install_warning_printer, state

PANEL_DATA = "Data"
PANEL_MODEL = "Training"
PANEL_SUBMIT = "Submission and scoring"
PANEL_PIPELINE = "Pipeline"
PANEL_INFERENCE = "Inference"

app = typer.Typer(
    name="nerveseg",
    help="Competition-grade 2D medical image segmentation, one focused command at a time. "
    "Commands pass results through files (docs/formats.md), so a pipeline is a shell script.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nerveseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug",
                                        help="Show full tracebacks for errors.")] = False,
) -> None:
    state.debug = debug
    install_warning_printer()


def main() -> None:
    app(prog_name="nerveseg")

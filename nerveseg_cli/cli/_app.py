"""The Typer application, its global options, and the entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from nerveseg_cli import __version__
from nerveseg_cli.cli._common import handle_errors, install_warning_printer, print_error, state

# Help panels in pipeline order; cli/__init__.py registers the commands in this order too,
# which is the order Typer shows the panels in.
PANEL_DATA = "Data"
PANEL_TRAINING = "Training"
PANEL_INFERENCE = "Inference"
PANEL_SUBMIT = "Submission and scoring"
PANEL_PIPELINE = "Pipeline"



def _hide_flag_metavars(params: list[Any]) -> list[Any]:
    """A flag takes no value, so its help line shows none (Typer would print ``<bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class NervesegGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _hide_flag_metavars(super().get_params(ctx))

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """Command-line mistakes (an unknown option, a value out of range) are bad input like
        any other: one ``error:`` line and exit code 2, not a usage panel."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.TyperException as exc:  # Typer's command-line errors (click's, vendored)
            if type(exc).__name__ == "NoArgsIsHelpError":
                typer.echo(exc.ctx.get_help())
                sys.exit(0)
            print_error(_usage_message(exc))
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_message(exc: typer.TyperException) -> str:
    """One line: the problem, and the command whose --help explains it."""
    message = " ".join(exc.format_message().split())
    context = getattr(exc, "ctx", None)
    if context is not None:
        message += f" (see '{context.command_path} --help')"
    return message


class NervesegCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _hide_flag_metavars(super().get_params(ctx))


app = typer.Typer(
    cls=NervesegGroup,
    name="nerveseg",
    help="Competition-grade 2D medical image segmentation, one focused command at a time. "
    "Commands pass results through files (docs/formats.md), so a pipeline is a shell script.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def command(name: str, panel: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command in a help panel, with the shared error handling (one ``error:``
    line and exit code 2 for bad input, docs/formats.md)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        return app.command(name, rich_help_panel=panel, cls=NervesegCommand)(
            handle_errors(function))

    return register


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

"""What every command shares: error handling, warnings, consoles, progress, common options."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _State:
    debug: bool = False


state = _State()
# Paths, ids and messages are user text: no markup, no emoji codes (a path with ":100:" stays as
# it is), no highlighting.
_PLAIN_TEXT: dict[str, Any] = {"highlight": False, "markup": False, "emoji": False}
stdout = Console(soft_wrap=False, **_PLAIN_TEXT)
stderr = Console(stderr=True, **_PLAIN_TEXT)


def print_error(message: str) -> None:
    """``error: ...`` on stderr, as one line (line breaks inside a message become spaces)."""
    stderr.print(f"error: {' '.join(str(message).split())}", soft_wrap=True)


def fail(message: str) -> typer.Exit:
    print_error(message)
    return typer.Exit(code=2)


def handle_errors(command: F) -> F:
    """Turn NervesegError (and OS errors) into one line on stderr and exit code 2."""
    from nerveseg_cli.errors import NervesegError

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (NervesegError, OSError) as exc:
            if state.debug:
                raise
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def install_warning_printer() -> None:
    """Print NervesegWarning as ``warning: ...`` lines on stderr (other warnings unchanged)."""
    from nerveseg_cli.errors import NervesegWarning

    original = warnings.showwarning
    if getattr(original, "nerveseg", False):
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, NervesegWarning):
            stderr.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
        else:
            original(message, category, filename, lineno, file, line)

    show.nerveseg = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", NervesegWarning)


class RateColumn(ProgressColumn):
    """Items per second, in the bar's unit (``12.5 frames/s``)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


@contextmanager
def progress_bar(total: int | None, description: str, unit: str | None = None
                 ) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr, with a rate column in ``unit`` if given; yields
    ``advance(n)`` (thread-safe)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               *([RateColumn(unit)] if unit else []), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True,
                  disable=not stderr.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def print_json(data: Any) -> None:
    from nerveseg_cli.records import json_text

    sys.stdout.write(json_text(data))


def print_whole(table: Table) -> None:
    """Print a table of figures at its full width even where the console is narrower (80
    columns in a pipe): rich would otherwise cut every cell to "0.10…"."""
    from rich.measure import Measurement

    width = Measurement.get(stdout, stdout.options.update(width=10_000), table).maximum
    if width <= stdout.width:
        stdout.print(table)
        return
    # print(width=) can only narrow, so a console as wide as the table, reading no markup
    Console(width=width, soft_wrap=False, **_PLAIN_TEXT).print(table, crop=False)


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, format_value(value))
    return table


def format_value(value: Any) -> str:
    if value is None:  # a figure that does not exist (null in --json)
        return "n/a"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"
    return str(value)


def out_option(help: str, **kwargs: Any) -> Any:
    """``--out`` / ``-o``: where a command writes (the one spelling of the alias)."""
    return typer.Option("--out", "-o", help=help, show_default=False, **kwargs)


# Options shared by name across commands (docs/formats.md: same option, same name everywhere).
Overwrite = Annotated[bool, typer.Option("--overwrite",
                                         help="Write into an existing output.")]
Workers = Annotated[int, typer.Option("--workers", min=1,
                                      help="Threads for decoding and writing files.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
Threshold = Annotated[float | None, typer.Option(
    "--threshold", min=0.0, max=1.0,
    help="Probability cut: a pixel is foreground when value/255 > T. \\[default: 0.5]")]
MinArea = Annotated[int | None, typer.Option(
    "--min-area", min=0,
    help="Empty any prediction with fewer foreground pixels. \\[default: 0]")]
PostprocessFile = Annotated[Path | None, typer.Option(
    "--postprocess", exists=False, dir_okay=False,
    help="postprocess.json (from score --sweep-*) giving threshold and min-area; explicit "
         "--threshold/--min-area win.")]
Size = Annotated[str, typer.Option(
    "--size", help="Image size WxH for masks decoded from a Kaggle CSV.")]
Label = Annotated[int | None, typer.Option(
    "--label", help="Read masks as label maps: foreground = pixels equal to N.")]
PresenceThreshold = Annotated[float | None, typer.Option(
    "--presence-threshold", min=0.0, max=1.0,
    help="Empty the maps of images whose presence probability (presence.csv) is below T.")]
PresenceFrom = Annotated[Path | None, typer.Option(
    "--presence-from", help="Take presence from this presence.csv (e.g. another model's).")]
class OptionError(typer.BadParameter):
    """A bad option value found by nerveseg's own check, whose message names the option."""

    def format_message(self) -> str:
        return self.message


def _check_subject_regex(value: str | None) -> str | None:
    """Refuse a bad --subject-regex when the command line is read, whatever the input is."""
    if value is not None:
        from nerveseg_cli.errors import NervesegError
        from nerveseg_cli.io.datasets import compile_subject_regex

        try:
            compile_subject_regex(value)
        except NervesegError as exc:
            raise OptionError(str(exc)) from None
    return value


ClassesOption = Annotated[str | None, typer.Option(
    "--classes", metavar="NAMES|N",
    help="A multi-class task: class names, background first (background,nerve,vessel), or "
         "their count (3). Label maps hold the class index. \\[default: binary]",
    show_default=False)]
SubjectRegex = Annotated[str | None, typer.Option(
    "--subject-regex", callback=_check_subject_regex,
    help="Regex whose first group is the subject of an id.")]

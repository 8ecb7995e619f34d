"""The one error type every library function raises for bad input, the warning type, and the
"did you mean" hint both use."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from pathlib import Path


class NervesegError(Exception):
    """Bad input or an unusable environment, described in one line for the user.

    The CLI turns it into ``error: <message>`` on stderr and exit code 2; anything else is a bug
    and keeps its traceback.
    """


class NervesegWarning(UserWarning):
    """Something the user should know about, that does not stop the command."""


def warn(message: str) -> None:
    warnings.warn(message, NervesegWarning, stacklevel=2)


def suggest(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean a, b?"`` for the choices close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def brief(exc: BaseException, most: int = 120) -> str:
    """An exception's first line, at most ``most`` characters, to quote inside a one-line
    error (library messages can run to many lines, e.g. torch's unpickling advice)."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text if len(text) <= most else text[: most - 3] + "..."


def write_error(path: Path, exc: OSError) -> NervesegError:
    """A failed write, named by its output (read-only place, disk full ...)."""
    return NervesegError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})")


def require_folder(path: Path, what: str) -> Path:
    """An input that must be a folder: a file in its place is said to be one."""
    if path.is_file():
        raise NervesegError(f"{path}: is a file, not {what}")
    if not path.is_dir():
        raise NervesegError(f"{path}: no such folder")
    return path


def require_file(path: Path, what: str) -> Path:
    """An input that must be a file: a folder in its place is said to be one (a library
    would say "no such file" or "Is a directory"), nothing there is "no such file"."""
    if path.is_dir():
        raise NervesegError(f"{path}: is a folder, not {what}")
    if not path.is_file():
        raise NervesegError(f"{path}: no such file")
    return path

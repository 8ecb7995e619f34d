"""The ``nerveseg`` command line: one small module per command, each a thin Typer wrapper
around a library function. Library modules are imported inside the commands so that
``nerveseg --help`` stays fast (torch is only loaded by commands that need it)."""

from __future__ import annotations

from nerveseg_cli.cli import demo, rle_decode, rle_encode, score, synth  # noqa: F401  (register)
from nerveseg_cli.cli._app import app, main

__all__ = ["app", "main"]

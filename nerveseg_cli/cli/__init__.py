"""The ``nerveseg`` command line: one small module per command, each a thin Typer wrapper
around a library function. Library modules are imported inside the commands so that
``nerveseg --help`` stays fast (torch is only loaded by commands that need it)."""

from __future__ import annotations

from nerveseg_cli.cli import (  # noqa: F401  (register the commands)
    crf,
    dedupe,
    demo,
    ensemble,
    predict,
    recipes,
    rle_decode,
    rle_encode,
    score,
    split,
    synth,
    train,
)
from nerveseg_cli.cli._app import app, main

__all__ = ["app", "main"]

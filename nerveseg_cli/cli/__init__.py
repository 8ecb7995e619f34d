"""The ``nerveseg`` command line: one small module per command, each a thin Typer wrapper
around one library function. Library modules are imported inside the commands so that
``nerveseg --help`` stays fast (torch is only loaded by commands that need it).

The commands are registered in pipeline order, which is the order of ``--help``'s panels.
"""

from __future__ import annotations

# isort: off
from nerveseg_cli.cli import (  # noqa: F401  (register the commands, in pipeline order)
    synth,
    dedupe,
    split,
    train,
    recipes,
    predict,
    export,
    bench,
    ensemble,
    crf,
    score,
    rle_encode,
    rle_decode,
    demo,
    workflow,
)
# isort: on
from nerveseg_cli.cli._app import app, main

__all__ = ["app", "main"]

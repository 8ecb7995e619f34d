"""``nerveseg crf``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_INFERENCE, command
from nerveseg_cli.cli._common import (
    JsonOutput,
    Overwrite,
    key_value_table,
    out_option,
    print_json,
    progress_bar,
    stdout,
)


# One parameter per option: this is Typer's declaration of the command line.
@command("crf", PANEL_INFERENCE)
def crf_command(
    probs: Annotated[Path, typer.Argument(help="Probability folder to refine.")],
    images: Annotated[Path, typer.Argument(
        help="Image set holding every map's image (Kaggle folder, images/ folder or manifest).")],
    out: Annotated[Path, out_option(help="Probability folder to write.")],
    sxy_gaussian: Annotated[float, typer.Option(
        "--sxy-gaussian", help="Smoothness kernel width in pixels.")] = 3.0,
    compat_gaussian: Annotated[float, typer.Option(
        "--compat-gaussian", help="Smoothness weight (0 turns the term off).")] = 3.0,
    sxy_bilateral: Annotated[float, typer.Option(
        "--sxy-bilateral", help="Appearance kernel width in pixels.")] = 10.0,
    schan: Annotated[float, typer.Option(
        "--schan", help="Appearance kernel width in gray levels (0-255).")] = 20.0,
    compat_bilateral: Annotated[float, typer.Option(
        "--compat-bilateral", help="Appearance weight (0 turns the term off).")] = 3.0,
    iterations: Annotated[int, typer.Option(
        "--iterations", min=0, help="Mean-field iterations.")] = 5,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Processes, one image each at a time. \\[default: CPU count]")
    ] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip ids already written in --out (same options required).")
    ] = False,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Refine probability maps with a fully connected CRF on the grayscale image."""
    from nerveseg_cli.inference.crf import CrfParams, crf

    params = CrfParams(sxy_gaussian=sxy_gaussian, compat_gaussian=compat_gaussian,
                       sxy_bilateral=sxy_bilateral, schan=schan,
                       compat_bilateral=compat_bilateral, iterations=iterations)
    start = time.perf_counter()
    with progress_bar(None, "crf") as advance:
        result = crf(probs, images, out, params=params, workers=workers, resume=resume,
                     overwrite=overwrite, progress=advance)
    seconds = time.perf_counter() - start
    refined = len(result.refined)
    summary = {"refined": refined, "skipped_already_written": len(result.skipped),
               "presence_csv": result.presence_written, "seconds": round(seconds, 2),
               "images_per_second": round(refined / seconds, 2) if refined else 0.0,
               "out": str(result.out)}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("crf", summary))

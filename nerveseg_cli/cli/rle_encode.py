"""``nerveseg rle-encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_SUBMIT, command
from nerveseg_cli.cli._common import (
    JsonOutput,
    Label,
    MinArea,
    Overwrite,
    PostprocessFile,
    PresenceFrom,
    PresenceThreshold,
    Size,
    Threshold,
    Workers,
    key_value_table,
    out_option,
    print_json,
    stdout,
)


# One parameter per option: this is Typer's declaration of the command line.
@command("rle-encode", PANEL_SUBMIT)
def rle_encode_command(
    source: Annotated[Path, typer.Argument(
        metavar="INPUT", help="Mask set or probability folder (or a Kaggle CSV to re-encode).")],
    out: Annotated[Path, out_option(help="CSV file to write.")],
    fmt: Annotated[str, typer.Option(
        "--format", help="submission (img,pixels) or train (subject,img,pixels).")
    ] = "submission",
    threshold: Threshold = None,
    min_area: MinArea = None,
    postprocess: PostprocessFile = None,
    ids_from: Annotated[Path | None, typer.Option(
        "--ids-from", help="Emit exactly these ids in this order (e.g. sample_submission.csv).")
    ] = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="With --ids-from: write ids without a prediction as empty.")
    ] = False,
    label: Label = None,
    size: Size = "580x420",
    presence_threshold: PresenceThreshold = None,
    presence_from: PresenceFrom = None,
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Encode masks or probability maps as a Kaggle submission (column-major RLE)."""
    from nerveseg_cli.io.images import parse_size
    from nerveseg_cli.submission import encode_folder

    result = encode_folder(source, out, fmt=fmt, threshold=threshold, min_area=min_area,
                           presence_threshold=presence_threshold, presence_from=presence_from,
                           postprocess=postprocess, ids_from=ids_from,
                           allow_missing=allow_missing, label=label, size=parse_size(size),
                           overwrite=overwrite, workers=workers)
    summary = {"rows": result.rows, "non_empty": result.non_empty,
               "written_empty_missing": len(result.missing),
               "left_out_not_in_ids": len(result.extra),
               "threshold": result.post.threshold, "min_area": result.post.min_area,
               "out": str(out)}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("rle-encode", summary))

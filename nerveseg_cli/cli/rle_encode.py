"""``nerveseg rle-encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_SUBMIT, command
from nerveseg_cli.cli._common import (
    ClassesOption,
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
    fmt: Annotated[str | None, typer.Option(
        "--format", help="submission (img,pixels) or train (subject,img,pixels); with several "
        "classes long (ImageId,ClassId,EncodedPixels) or joined (Image_Label,EncodedPixels). "
        "Default: submission, long, or the form of --ids-from.", show_default=False)
    ] = None,
    classes: ClassesOption = None,
    threshold: Threshold = None,
    min_area: MinArea = None,
    postprocess: PostprocessFile = None,
    ids_from: Annotated[Path | None, typer.Option(
        "--ids-from", help="Emit exactly these ids (or image-class rows) in this order "
        "(e.g. sample_submission.csv).")
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
    from nerveseg_cli.classes import parse_classes
    from nerveseg_cli.io.images import parse_size
    from nerveseg_cli.submission.codec import encode_folder

    result = encode_folder(source, out, fmt=fmt, classes=parse_classes(classes),
                           threshold=threshold, min_area=min_area,
                           presence_threshold=presence_threshold, presence_from=presence_from,
                           postprocess=postprocess, ids_from=ids_from,
                           allow_missing=allow_missing, label=label, size=parse_size(size),
                           overwrite=overwrite, workers=workers)
    summary = result.summary(out)
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("rle-encode", summary))

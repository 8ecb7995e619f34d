"""``nerveseg rle-decode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_SUBMIT, command
from nerveseg_cli.cli._common import (
    ClassesOption,
    JsonOutput,
    Overwrite,
    Size,
    Workers,
    key_value_table,
    out_option,
    print_json,
    progress_bar,
    stdout,
)


@command("rle-decode", PANEL_SUBMIT)
def rle_decode_command(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV",
                                             help="Kaggle CSV: img,pixels, subject,img,pixels, "
                                             "ImageId,ClassId,EncodedPixels or "
                                             "Image_Label,EncodedPixels.")],
    out: Annotated[Path, out_option(help="Folder for the mask PNGs (several classes: "
                                         "classes.json and a folder per class).")],
    classes: ClassesOption = None,
    label_maps: Annotated[bool, typer.Option(
        "--label-maps", help="Several classes: one palette label map per image instead of a "
        "folder per class.")] = False,
    size: Size = "580x420",
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Turn a Kaggle RLE CSV back into mask PNGs (strictly validated first)."""
    from nerveseg_cli.classes import parse_classes
    from nerveseg_cli.io.images import parse_size
    from nerveseg_cli.submission.codec import decode_csv_to_folder

    dims = parse_size(size)
    with progress_bar(None, "rle-decode") as advance:
        result = decode_csv_to_folder(csv_file, out, classes=parse_classes(classes),
                                      label_maps=label_maps, size=dims, overwrite=overwrite,
                                      workers=workers, progress=advance)
    summary = result.summary(out)
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("rle-decode", summary))

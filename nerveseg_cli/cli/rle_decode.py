"""``nerveseg rle-decode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nerveseg_cli.cli._app import PANEL_SUBMIT, command
from nerveseg_cli.cli._common import (
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
                                             help="Kaggle CSV: img,pixels or subject,img,pixels.")],
    out: Annotated[Path, out_option(help="Folder for the mask PNGs.")],
    size: Size = "580x420",
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Turn a Kaggle RLE CSV back into mask PNGs (strictly validated first)."""
    from nerveseg_cli.io.images import parse_size
    from nerveseg_cli.submission import decode_csv_to_folder

    dims = parse_size(size)
    with progress_bar(None, "rle-decode") as advance:
        result = decode_csv_to_folder(csv_file, out, size=dims, overwrite=overwrite,
                                      workers=workers, progress=advance)
    summary = {"format": result.format, "masks_written": result.written,
               "non_empty": result.non_empty, "out": str(out)}
    if json_output:
        print_json(summary)
    else:
        stdout.print(key_value_table("rle-decode", summary))

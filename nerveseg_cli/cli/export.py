"""``nerveseg export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nerveseg_cli.cli._app import PANEL_INFERENCE, command
from nerveseg_cli.cli._common import (
    JsonOutput,
    Overwrite,
    key_value_table,
    out_option,
    print_json,
    stdout,
)


# One parameter per option: this is Typer's declaration of the command line.
@command("export", PANEL_INFERENCE)
def export_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="The run folder to export.")],
    out: Annotated[Path, out_option(
        help="The ONNX model to write (NAME.onnx); its sidecar NAME.onnx.json goes beside it.")],
    opset: Annotated[int, typer.Option(help="ONNX opset (13 to 20).")] = 17,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Export a run to ONNX with a JSON sidecar (preprocessing, classes, outputs), checked
    against torch with ONNX Runtime before it is written."""
    from nerveseg_cli.inference.export import export_run

    result = export_run(run, out, opset=opset, overwrite=overwrite)
    if json_output:
        print_json(result.summary)
    else:
        stdout.print(key_value_table("export", _readable(result.summary)))


def _readable(summary: dict[str, Any]) -> dict[str, Any]:
    """The differences in scientific notation (they are around 1e-7: fixed point shows 0),
    the seconds to a tenth."""
    rows = dict(summary)
    for key, value in summary.items():
        if key.startswith(("max_abs_diff", "relative_diff")) and isinstance(value, float):
            rows[key] = f"{value:.2e}"
    rows["seconds"] = f"{summary['seconds']:.1f}"
    return rows

"""``nerveseg ensemble``.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nerveseg_cli.cli._app import PANEL_INFERENCE, command
from nerveseg_cli.cli._common import (
    JsonOutput,
    Overwrite,
    Threshold,
    Workers,
    key_value_table,
    out_option,
    print_json,
    progress_bar,
    stdout,
)


# One parameter per option: this is Typer's declaration of the command line.
@command("ensemble", PANEL_INFERENCE)
def ensemble_command(
    members: Annotated[list[Path], typer.Argument(
        metavar="DIR...", help="Probability folders to merge (two or more).")],
    out: Annotated[Path, out_option(help="Probability folder to write.")],
    method: Annotated[str, typer.Option(
        "--method", help="mean, weighted (needs --weights), vote (strict majority at "
        "--threshold) or asme (seed 000's per-image agreement weights).")] = "mean",
    weights: Annotated[str | None, typer.Option(
        "--weights", help="For --method weighted: w1,w2,... one per folder, normalised.")
    ] = None,
    threshold: Threshold = None,
    asme_base: Annotated[float, typer.Option(
        "--asme-base", help="For --method asme: weights = base^v / sum(base^v).")] = 100.0,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Merge ids that only some folders hold, from those folders.")
    ] = False,
    overwrite: Overwrite = False,
    workers: Workers = 4,
    json_output: JsonOutput = False,
) -> None:
    """Merge probability folders (mean, weighted, vote or ASME) into one probability folder."""
    from nerveseg_cli.inference.ensemble import ensemble, parse_weights
    from nerveseg_cli.inference.merging import MergeRule

    parsed = parse_weights(weights, len(members)) if weights is not None else None
    with progress_bar(None, "ensemble") as advance:
        rule = MergeRule(method, parsed, 0.5 if threshold is None else threshold, asme_base)
        result = ensemble(members, out, rule, allow_missing=allow_missing,
                          overwrite=overwrite, workers=workers, progress=advance)
    summary = {"images": len(result.ids), "folders": len(result.members),
               "method": result.method, "merged_from_fewer_folders": len(result.partial),
               "presence_csv": result.presence_written, "out": str(result.out)}
    if json_output:
        if result.mean_weights is not None:
            summary["mean_weights"] = dict(zip(map(str, result.members), result.mean_weights,
                                               strict=True))
        print_json(summary)
        return
    stdout.print(key_value_table("ensemble", summary))
    if result.mean_weights is not None:
        table = Table(title="mean ASME weight per folder (weights.csv has every image)",
                      title_justify="left")
        table.add_column("folder")
        table.add_column("mean weight", justify="right")
        for member, weight in zip(result.members, result.mean_weights, strict=True):
            table.add_row(str(member), f"{weight:.4f}")
        stdout.print(table)

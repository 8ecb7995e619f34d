"""``nerveseg bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nerveseg_cli.cli._app import PANEL_INFERENCE, command
from nerveseg_cli.cli._common import JsonOutput, format_value, print_json, stdout


# One parameter per option: this is Typer's declaration of the command line.
@command("bench", PANEL_INFERENCE)
def bench_command(
    model: Annotated[Path, typer.Argument(
        metavar="RUN_OR_ONNX", help="A run folder, or an exported model (NAME.onnx).")],
    images: Annotated[Path | None, typer.Argument(
        metavar="[IMAGES]", help="Frames to time (any image set); synthetic frames if omitted.",
        show_default=False)] = None,
    engine: Annotated[str, typer.Option(help="torch, onnxruntime or both.")] = "both",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_sizes: Annotated[str, typer.Option(
        help="Batch sizes to time throughput at, e.g. 1,2,4,8.")] = "1,2,4,8",
    frames: Annotated[int, typer.Option(
        min=1, help="Frames timed for latency, and at least for each batch size.")] = 100,
    size: Annotated[str | None, typer.Option(
        help="Synthetic frame size WxH. \\[default: 580x420, within a padding canvas]",
        show_default=False)] = None,
    tta: Annotated[str, typer.Option(help="none, hflip or flips, as predict's.")] = "none",
    json_output: JsonOutput = False,
) -> None:
    """Time a model as a live stream sees it: per-frame latency p50/p95/p99 at batch 1
    (preprocessing and postprocessing included) and throughput at each batch size, for torch
    and ONNX Runtime."""
    from nerveseg_cli.bench import BenchOptions, bench, parse_batch_sizes
    from nerveseg_cli.io.images import parse_size

    options = BenchOptions(engine=engine, device=device,
                           batch_sizes=parse_batch_sizes(batch_sizes), frames=frames,
                           size=parse_size(size) if size else None, tta=tta)
    result = bench(model, images, options)
    if json_output:
        print_json(result.to_dict())
        return
    stdout.print(_table(result))
    ratios = result.ratios()
    if ratios:
        stdout.print(f"onnxruntime / torch: throughput {ratios['throughput']:.2f}x, "
                     f"p50 latency {ratios['latency_p50']:.2f}x")


def _table(result: Any) -> Any:
    from rich.table import Table

    geometry = result.geometry
    title = (f"bench {result.model} ({result.arch}, {geometry['mode']} "
             f"{geometry['width']}x{geometry['height']}): {result.frames} frames of "
             f"{result.frames_from}, tta {result.tta}; {result.cores} cores, load "
             f"{format_value(result.load_average)}")
    table = Table(title=title, title_justify="left")
    for name in ("engine", "device", "threads", "p50 ms", "p95 ms", "p99 ms",
                 "batch 1 fps", "best batch", "best fps", "fps by batch"):
        table.add_column(name, justify="left" if name in ("engine", "device") else "right")
    for e in result.engines:
        by_batch = ", ".join(f"{b}: {fps:.1f}" for b, fps in e.throughput.items())
        table.add_row(e.engine, e.device, str(e.threads or "-"),
                      f"{e.latency_ms['p50']:.1f}", f"{e.latency_ms['p95']:.1f}",
                      f"{e.latency_ms['p99']:.1f}", f"{e.fps_batch1:.1f}", str(e.best_batch),
                      f"{e.best_fps:.1f}", by_batch)
    return table

"""``nerveseg bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nerveseg_cli.cli._app import PANEL_INFERENCE, command
from nerveseg_cli.cli._common import JsonOutput, print_json, stdout


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
    from nerveseg_cli.inference.bench import BenchOptions, bench, parse_batch_sizes
    from nerveseg_cli.io.images import parse_size

    options = BenchOptions(engine=engine, device=device,
                           batch_sizes=parse_batch_sizes(batch_sizes), frames=frames,
                           size=parse_size(size) if size else None, tta=tta)
    result = bench(model, images, options)
    if json_output:
        print_json(result.to_dict())
        return
    stdout.print(_table(result))
    stdout.print(_throughput_table(result))
    ratios = result.ratios()
    if ratios:
        stdout.print(f"onnxruntime / torch: throughput {ratios['throughput']:.2f}x, "
                     f"p50 latency {ratios['latency_p50']:.2f}x")


def _device(where: str) -> str:
    """``CPUExecutionProvider`` -> ``cpu`` (the engine column says it is ONNX Runtime)."""
    return where.removesuffix("ExecutionProvider").lower()


def _table(result: Any) -> Any:
    """Latency at batch 1 and the best throughput, one row per engine (fits 100 columns)."""
    from rich.table import Table

    geometry = result.geometry
    load = "n/a" if result.load_average is None else f"{result.load_average:.2f}"
    title = (f"bench {result.model} ({result.arch}, {geometry['mode']} "
             f"{geometry['width']}x{geometry['height']}): {result.frames} frames of "
             f"{result.frames_from}, tta {result.tta}; {result.cores} cores, load {load}")
    table = Table(title=title, title_justify="left")
    for name in ("engine", "device", "threads", "p50 ms", "p95 ms", "p99 ms", "fps at 1",
                 "best batch", "best fps"):
        table.add_column(name, justify="left" if name in ("engine", "device") else "right",
                         no_wrap=True)
    for e in result.engines:
        table.add_row(e.engine, _device(e.device), str(e.threads or "-"),
                      f"{e.latency_ms['p50']:.1f}", f"{e.latency_ms['p95']:.1f}",
                      f"{e.latency_ms['p99']:.1f}", f"{e.fps_batch1:.1f}", str(e.best_batch),
                      f"{e.best_fps:.1f}")
    return table


def _throughput_table(result: Any) -> Any:
    """Frames per second at each batch size: a row per size, a column per engine."""
    from rich.table import Table

    table = Table(title="frames/s by batch size", title_justify="left")
    table.add_column("batch", justify="right")
    for e in result.engines:
        table.add_column(e.engine, justify="right", no_wrap=True)
    for size in result.engines[0].throughput:
        table.add_row(str(size), *(f"{e.throughput[size]:.1f}" for e in result.engines))
    return table

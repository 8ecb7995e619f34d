"""``nerveseg bench`` (docs/bench.md): latency percentiles at batch 1 and throughput by batch
size for torch and ONNX Runtime, as JSON and as a table that fits 100 columns; bad options, an
exported model with torch, and an empty image folder are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nerveseg_cli.cli import app
from nerveseg_cli.inference.export import sidecar_path
from tests.conftest import ANSI, CLI_ENV, assert_one_line_error

QUICK = ["--frames", "5", "--batch-sizes", "1,2", "--device", "cpu"]


def test_json_has_ordered_percentiles_and_the_best_batch(cli, hostile_base: Path) -> None:
    result = cli("bench", hostile_base / "run", *QUICK, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    data = json.loads(result.stdout)
    assert [e["engine"] for e in data["engines"]] == ["torch", "onnxruntime"]
    for engine in data["engines"]:
        latency = engine["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert set(engine["throughput"]) == {"1", "2"}
        assert all(fps > 0 for fps in engine["throughput"].values())
        assert engine["best_batch"] in (1, 2)
        assert engine["best_fps"] == max(engine["throughput"].values())
        assert engine["threads"] == 1  # OMP_NUM_THREADS=1 (conftest), both engines
    ratios = data["ratios"]
    torch_figures, ort = data["engines"]
    assert ratios["throughput"] == pytest.approx(ort["best_fps"] / torch_figures["best_fps"])
    assert ratios["latency_p50"] == pytest.approx(ort["latency_ms"]["p50"]
                                                  / torch_figures["latency_ms"]["p50"])
    assert data["frames"] == 5 and data["frames_from"] == "synthetic 64x48"


def test_an_image_set_and_an_exported_model(cli, hostile_base: Path, exported: Path) -> None:
    result = cli("bench", exported, hostile_base / "data" / "test", "--engine", "onnxruntime",
                 *QUICK, "--tta", "flips", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    data = json.loads(result.stdout)
    assert [e["engine"] for e in data["engines"]] == ["onnxruntime"]
    assert data["ratios"] is None and data["tta"] == "flips"
    assert data["frames_from"] == str(hostile_base / "data" / "test")


def _run_at_width(width: int, *args: str | Path) -> tuple[int, str]:
    runner = CliRunner(env={**CLI_ENV, "COLUMNS": str(width)})
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, ANSI.sub("", result.stdout)


def test_the_table_fits_100_columns_uncut(hostile_base: Path) -> None:
    code, out = _run_at_width(100, "bench", hostile_base / "run", *QUICK, "--size", "60x40")
    assert code == 0, out
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 100
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert {"torch", "onnxruntime", "1", "2"} <= set(rows), out
    assert "p99 ms" in out and "frames/s by batch size" in out
    assert "onnxruntime / torch: throughput" in out
    assert "synthetic 60x40" in out


@pytest.mark.parametrize(("options", "fragment"), [
    (["--batch-sizes", "0"], "--batch-sizes 0: whole numbers from 1 to 4096"),
    (["--batch-sizes", "a"], "--batch-sizes 'a': 'a' is not a whole number"),
    (["--batch-sizes", "1,,2"], "--batch-sizes '1,,2': an empty item"),
    # the sizes must differ (docs/bench.md): a repeat is refused, not dropped
    (["--batch-sizes", "1,1"], "--batch-sizes '1,1': '1' is given twice"),
    (["--engine", "x"], "--engine 'x': use torch, onnxruntime, both"),
    (["--frames", "0"], "--frames"),
    (["--tta", "rotate"], "--tta 'rotate'"),
    (["--size", "4000x4000"], "does not fit the 64x48 padding canvas"),
])
def test_bad_options_are_one_line_errors(cli, hostile_base: Path, options: list[str],
                                         fragment: str) -> None:
    result = cli("bench", hostile_base / "run", "--device", "cpu", *options)
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize("engine", ["torch", "both"])
def test_an_exported_model_cannot_run_in_torch(cli, exported: Path, engine: str) -> None:
    result = cli("bench", exported, "--engine", engine, *QUICK)
    assert_one_line_error(result, "runs with --engine onnxruntime only", str(exported))


def test_an_exported_model_without_its_sidecar(cli, exported: Path, tmp_path: Path) -> None:
    model = tmp_path / "lonely.onnx"
    shutil.copyfile(exported, model)
    assert not sidecar_path(model).exists()
    result = cli("bench", model, "--engine", "onnxruntime", *QUICK)
    assert_one_line_error(result, "sidecar lonely.onnx.json is missing")


def test_an_empty_image_folder(cli, hostile_base: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = cli("bench", hostile_base / "run", tmp_path / "empty", *QUICK)
    assert_one_line_error(result, str(tmp_path / "empty"))

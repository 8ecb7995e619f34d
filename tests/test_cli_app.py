"""The application shell: version, help, module entry point, error handling, the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nerveseg_cli import __version__
from tests.conftest import run_cli

COMMANDS = ["synth", "dedupe", "split", "train", "predict", "ensemble", "crf", "rle-encode",
            "rle-decode", "score", "demo"]


def test_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"nerveseg {__version__}"


def test_help_lists_every_command_in_panels() -> None:
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    for panel in ("Data", "Training", "Inference", "Submission and scoring", "Pipeline"):
        assert panel in result.stdout


def test_every_command_has_help() -> None:
    for command in COMMANDS:
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout, command


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "nerveseg_cli", "--version"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"nerveseg {__version__}"


def test_debug_shows_traceback_otherwise_one_line(tmp_path: Path) -> None:
    result = run_cli("rle-decode", tmp_path / "none.csv", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    result = run_cli("--debug", "rle-decode", tmp_path / "none.csv", "--out", tmp_path / "o")
    assert result.exit_code != 0 and result.exception is not None


def test_demo_runs_the_chain(tmp_path: Path) -> None:
    result = run_cli("demo", tmp_path / "demo", "--size", "64x48")
    assert result.exit_code == 0, result.stderr
    assert "Kaggle mean Dice" in result.stdout and "1.0000" in result.stdout
    assert "byte-identical: True" in result.stdout
    for step in ("nerveseg synth", "nerveseg rle-decode", "nerveseg rle-encode",
                 "nerveseg score"):
        assert step in result.stderr
    for path in ("data/train_masks.csv", "decoded", "train_masks.reencoded.csv",
                 "score/per_image.csv", "score/summary.json"):
        assert (tmp_path / "demo" / path).exists(), path

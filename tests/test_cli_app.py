"""The application shell: version, help, module entry point, error handling, the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nerveseg_cli import __version__
from tests.conftest import run_cli

COMMANDS = ["synth", "dedupe", "split", "train", "recipes", "predict", "ensemble", "crf",
            "rle-encode", "rle-decode", "score", "demo"]


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


def test_demo_refuses_a_used_folder_and_bad_settings_before_any_work(tmp_path: Path) -> None:
    """The demo itself runs in tests/workflow/test_demo.py; here only its cheap refusals."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    result = run_cli("demo", used)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]
    result = run_cli("demo", tmp_path / "new", "--train-size", "100x64")
    assert result.exit_code == 2 and "multiples of 32" in result.stderr
    assert not (tmp_path / "new").exists()

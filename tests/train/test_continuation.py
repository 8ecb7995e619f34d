"""``train --continue``: one command line starts a run, continues it after an interruption to
the weights of an uninterrupted run, finds it complete (exit 0, nothing trained), starts over a
run stopped before its first save, and refuses what it must not touch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nerveseg_cli.train.engine import train
from nerveseg_cli.train.options import TrainOptions
from tests.conftest import (
    Crash,
    assert_one_line_error,
    crash_after_first_epoch,
    run_cli,
    synth_with_folds,
)

TINY = ["--arch", "unet-plain", "--width", "2", "--epochs", "3", "--batch-size", "4",
        "--device", "cpu", "--workers", "1", "--deterministic", "--seed", "3"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_with_folds(tmp_path_factory.mktemp("continue"), subjects=3, per_subject=4,
                            test=1, size=(64, 48), seed=2, fold_of=lambda subject: subject % 2)


def again(manifest: Path, run: Path, *more: str):
    return run_cli("train", manifest, "--fold", "0", "--out", run, "--continue", *TINY, *more)


def test_starts_then_finds_the_run_complete(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = again(manifest, run)
    assert first.exit_code == 0, first.stderr
    assert f"{run}: starting a new run" in first.stderr
    stamp = (run / "model.safetensors").stat().st_mtime_ns
    second = again(manifest, run)
    assert second.exit_code == 0, second.stderr
    assert f"{run}: complete (3 epochs): nothing to train" in second.stderr
    assert (run / "model.safetensors").stat().st_mtime_ns == stamp  # nothing retrained
    assert (run / "train.log").read_text().count("\n") == 3


def test_continues_an_interrupted_run_to_the_uninterrupted_weights(manifest: Path,
                                                                   tmp_path: Path) -> None:
    assert again(manifest, tmp_path / "straight").exit_code == 0

    options = TrainOptions(manifest=str(manifest), fold="0", arch="unet-plain", width=2,
                           epochs=3, batch_size=4, device="cpu", workers=1,
                           deterministic=True, seed=3)
    with pytest.raises(Crash):
        train(options, tmp_path / "stopped", reporter=crash_after_first_epoch())
    result = again(manifest, tmp_path / "stopped")
    assert result.exit_code == 0, result.stderr
    assert "continuing the run from its last save" in result.stderr
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_before_its_first_save_starts_over(manifest: Path,
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert again(manifest, run).exit_code == 0
    for name in ("state.pt", "last.safetensors", "model.safetensors"):
        (run / name).unlink()  # what a kill before the first save leaves: config, epoch lines
    result = again(manifest, run)
    assert result.exit_code == 0, result.stderr
    assert "starting the run over" in result.stderr
    assert (run / "train.log").read_text().count("\n") == 3  # the old lines are gone


def test_stopped_by_patience_is_complete(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    options = ["--patience", "1", "--lr", "1e-9", "--epochs", "6"]  # no gain: stops at epoch 2
    assert again(manifest, run, *options).exit_code == 0
    epochs = (run / "train.log").read_text().count("\n")
    assert epochs < 6
    result = again(manifest, run, *options)
    assert result.exit_code == 0, result.stderr
    assert "stopped early by --patience): nothing to train" in result.stderr
    assert (run / "train.log").read_text().count("\n") == epochs


def test_refusals(manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert again(manifest, run).exit_code == 0
    assert_one_line_error(again(manifest, run, "--lr", "0.01"),
                          "cannot resume with different options", "lr")
    assert_one_line_error(again(manifest, run, "--overwrite"), "--continue", "--overwrite")
    assert_one_line_error(run_cli("train", "--resume", run, "--continue"), "--continue")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_one_line_error(again(manifest, foreign), "holds files but no run")
    assert (foreign / "notes.txt").read_text() == "mine"

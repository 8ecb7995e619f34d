"""A process killed outright (kill -9) leaves what ``--resume`` continues from: complete maps
for predict, the last saved state for train; the resumed run ends as a straight one would.
SIGTERM and Ctrl-C stop training after saving, with exit code 143 / 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nerveseg_cli.io.probmaps import read_probability_values
from tests.conftest import run_cli

TINY = ("--arch", "unet-plain", "--width", "2", "--batch-size", "4", "--device", "cpu",
        "--workers", "1")


def _start(*args: str | Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nerveseg_cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen, ready: callable, timeout: float = 120) -> None:
    """kill -9 the process as soon as ``ready()`` holds (it must not have finished)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the process never got there"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_predict_killed_then_resumed_equals_a_straight_run(hostile_base: Path,
                                                          tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    test = hostile_base / "data" / "test"
    for copy in range(8):  # 48 images: long enough to be caught half way
        for source in sorted(test.glob("*.tif")):
            (images / f"{copy}_{source.stem}.tif").write_bytes(source.read_bytes())
    run, out = hostile_base / "run", tmp_path / "maps"
    args = ("predict", run, images, "--tta", "flips", "--batch-size", "1", "--device", "cpu",
            "--workers", "1")
    process = _start(*args, "--out", out)
    _kill_when(process, lambda: len(list(out.glob("*.png"))) >= 3)
    done = len(list(out.glob("*.png")))
    assert 3 <= done < 48
    for name in out.glob("*.png"):  # every map there is complete (atomic writes); a kill
        read_probability_values(name)  # between write and rename may leave a temp file
    result = run_cli(*args, "--out", out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert not list(out.glob(".*.tmp"))  # the resume removed what the kill left half-written
    straight = tmp_path / "straight"
    assert run_cli(*args, "--out", straight).exit_code == 0
    names = sorted(p.name for p in straight.glob("*.png"))
    assert names == sorted(p.name for p in out.glob("*.png")) and len(names) == 48
    for name in names:
        np.testing.assert_array_equal(read_probability_values(out / name),
                                      read_probability_values(straight / name))


def test_train_killed_then_resumed_runs_the_planned_epochs(hostile_base: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    # kill -9 gives no chance to save: only what --save-every saved survives
    process = _start("train", hostile_base / "folds.csv", "--fold", "0", "--epochs", "4",
                     *TINY, "--save-every", "1", "--out", run)
    _kill_when(process, lambda: (run / "state.pt").is_file())
    result = run_cli("train", "--resume", run, "--workers", "1")
    assert result.exit_code == 0, result.stderr
    lines = (run / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]


@pytest.mark.parametrize(("number", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_train_stopped_by_a_signal_saves_and_resumes_to_the_planned_epochs(
        hostile_base: Path, tmp_path: Path, number: int, code: int) -> None:
    # far more epochs than can pass between the first one's line and the signal (a 50 ms poll)
    run, epochs = tmp_path / "run", 20
    process = _start("train", hostile_base / "folds.csv", "--fold", "0", "--epochs",
                     str(epochs), *TINY, "--out", run)
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").is_file():  # epoch 1 done: the loop is running
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never got to its first epoch"
        time.sleep(0.05)
    # the default policy (10m) has not saved yet: whatever is saved, the signal saved
    assert not (run / "state.pt").exists()
    process.send_signal(number)
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == code, stderr
    assert "interrupted:" in stderr and signal.Signals(number).name in stderr, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    done = len(pd.read_csv(run / "metrics.csv"))
    assert (run / "state.pt").is_file() and (run / "last.safetensors").is_file()
    assert (run / "model.safetensors").is_file()
    assert 1 <= done < epochs
    result = run_cli("train", "--resume", run, "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(1, epochs + 1))

"""A process killed outright (kill -9) leaves what ``--resume`` continues from: complete maps
for predict, the last saved epoch for train; the resumed run ends as a straight one would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nerveseg_cli.probmaps import read_probability_values
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
    assert not list(out.glob(".*.tmp"))  # every map there is complete (atomic writes)
    result = run_cli(*args, "--out", out, "--resume")
    assert result.exit_code == 0, result.stderr
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
    process = _start("train", hostile_base / "folds.csv", "--fold", "0", "--epochs", "4",
                     *TINY, "--out", run)
    _kill_when(process, lambda: (run / "metrics.csv").is_file()
               and len((run / "metrics.csv").read_text().splitlines()) >= 2)
    result = run_cli("train", "--resume", run, "--workers", "1")
    assert result.exit_code == 0, result.stderr
    lines = (run / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4"]

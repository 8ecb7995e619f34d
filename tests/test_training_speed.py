"""How `train` sizes torch's CPU thread team: from the cores this process may use (affinity, a
cgroup quota), fewer while other processes keep cores busy, fixed by --threads or
OMP_NUM_THREADS, and given back to the caller afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nerveseg_cli import device
from nerveseg_cli.train.engine import train
from nerveseg_cli.train.options import TrainOptions
from nerveseg_cli.train.progress import Reporter
from tests.conftest import synth_with_folds


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_with_folds(tmp_path_factory.mktemp("speed"), subjects=2, per_subject=6,
                            test=0, size=(64, 48), seed=4)


@pytest.mark.parametrize(("cores", "busy", "threads"), [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.5, 1), (2, 1.5, 1), (2, 7.0, 1), (8, 2.5, 5), (1, 0.0, 1),
])
def test_threads_are_the_cores_other_processes_leave_free(cores: int, busy: float,
                                                          threads: int) -> None:
    assert device.threads_for_load(cores, busy) == threads


def test_available_cores_follow_affinity_and_the_cgroup_quota(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(device, "CPU_MAX", str(tmp_path / "none"))
    assert device.available_cores() == 4
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 cores: two threads may run
    monkeypatch.setattr(device, "CPU_MAX", str(quota))
    assert device.available_cores() == 2
    quota.write_text("max 100000\n")
    assert device.available_cores() == 4


def test_the_cpu_meter_sees_another_process_busy() -> None:
    meter = device.CpuMeter()
    spin = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"])
    spin.wait()
    # the spinning child kept about one core busy for the whole window (more if other jobs
    # ran too); a meter that missed it, or counted this waiting process, would read ~0
    assert meter.others_busy() > 0.5


def test_set_threads_fixed_by_the_option_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert device.set_threads(1) is None and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert device.set_threads(0) is None  # torch read the variable: left as it is
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(device, "available_cores", lambda: 2)
        assert device.set_threads(0) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


class ThreadsSeen(Reporter):
    def __init__(self) -> None:
        self.seen: set[int] = set()

    def step(self) -> None:
        self.seen.add(torch.get_num_threads())


class FakeMeter:
    busy = 0.0

    def others_busy(self) -> float:
        return self.busy


@pytest.mark.parametrize(("busy", "expected"), [(0.0, {2}), (1.5, {1})])
def test_automatic_threads_follow_the_load_and_are_given_back(
        manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy: float,
        expected: set[int]) -> None:
    from nerveseg_cli.train import engine

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    monkeypatch.setattr(FakeMeter, "busy", busy)
    monkeypatch.setattr(engine, "CpuMeter", FakeMeter)
    torch.set_num_threads(1)
    reporter = ThreadsSeen()
    train(TrainOptions(manifest=str(manifest), fold="0", arch="unet-plain", width=2, epochs=2,
                       batch_size=2, device="cpu", workers=1), tmp_path / "run",
          reporter=reporter)
    assert reporter.seen == expected
    assert torch.get_num_threads() == 1  # the caller's count again


def test_fixed_threads_ignore_the_load(manifest: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from nerveseg_cli.train import engine

    monkeypatch.setattr(FakeMeter, "busy", 1.5)
    monkeypatch.setattr(engine, "CpuMeter", FakeMeter)
    reporter = ThreadsSeen()
    train(TrainOptions(manifest=str(manifest), fold="0", arch="unet-plain", width=2, epochs=1,
                       batch_size=2, device="cpu", workers=1, threads=2), tmp_path / "run",
          reporter=reporter)
    assert reporter.seen == {2}
    assert torch.get_num_threads() == 1

"""Shared fixtures: a CLI runner that strips ANSI codes at a fixed width, and tiny synth data."""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.testing
from typer.testing import CliRunner

from nerveseg_cli.cli import app
from nerveseg_cli.synth import synth

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLI_ENV = {"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


# Typer's test runner rebuilds the click command from the app on every call, which costs more
# than most commands under test take; the app is the same for the whole session, so build once.
typer.testing._get_command = functools.lru_cache(maxsize=4)(typer.testing._get_command)


def run_cli(*args: str | Path) -> CliResult:
    """Invoke ``nerveseg`` in-process; output with ANSI codes stripped."""
    runner = CliRunner(env=CLI_ENV)
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    stderr = result.stderr if hasattr(result, "stderr") else ""
    return CliResult(result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", stderr),
                     result.exception)


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """Exit code 2 and one ``error:`` line on stderr that mentions every fragment."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """The test models are tiny: one intra-op thread is faster than two, which wait for each
    other at every operation (badly so on a CPU shared with other jobs). Subprocesses inherit
    OMP_NUM_THREADS."""
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def cli():
    return run_cli


def synth_with_folds(root: Path, *, subjects: int, per_subject: int, test: int,
                     size: tuple[int, int], seed: int,
                     fold_of: Callable[[int], int] = lambda subject: subject - 1) -> Path:
    """A synth set in ``root/data`` and ``root/manifest.csv`` of its training images with a
    fold column, ``fold_of(subject number)``; returns the manifest."""
    from nerveseg_cli.io.datasets import discover_images, write_manifest

    synth(root / "data", subjects=subjects, per_subject=per_subject, test=test, size=size,
          seed=seed)
    samples = discover_images(root / "data" / "train")
    path = root / "manifest.csv"
    write_manifest(path, samples, extra={"fold": [fold_of(int(s.subject)) for s in samples]})
    return path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synth dataset shared by the session; tests must copy it before changing it."""
    root = tmp_path_factory.mktemp("synth") / "data"
    synth(root, subjects=3, per_subject=8, test=6, size=(64, 48), seed=7)
    return root


@pytest.fixture
def synth_copy(synth_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(synth_root, copy)
    return copy


@pytest.fixture(scope="session")
def hostile_base(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What hostile-input cases start from (tests/hostile.py): ``data/`` (the session synth
    set), ``folds.csv`` (2 folds), ``run/`` (a tiny unet-plain trained one epoch on fold 1,
    validated on fold 0) and ``probs/`` (its probability maps of ``data/test``). Tests copy it
    with ``hostile.make_workspace``; never change it."""
    from nerveseg_cli.predict import PredictOptions, predict
    from nerveseg_cli.split import split, write_split
    from nerveseg_cli.train import TrainOptions, train

    base = tmp_path_factory.mktemp("hostile") / "base"
    shutil.copytree(synth_root, base / "data")
    write_split(split(base / "data" / "train", folds=2, seed=0, workers=1), base / "folds.csv")
    train(TrainOptions(manifest=str(base / "folds.csv"), fold="0", arch="unet-plain", width=2,
                       epochs=1, batch_size=8, device="cpu", workers=1), base / "run")
    predict([base / "run"], base / "data" / "test", base / "probs",
            PredictOptions(device="cpu", workers=1))
    return base


@pytest.fixture
def workspace(hostile_base: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``hostile_base`` for one case."""
    from tests.hostile import make_workspace

    return make_workspace(hostile_base, tmp_path / "ws")

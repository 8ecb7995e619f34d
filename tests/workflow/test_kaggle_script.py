"""examples/kaggle.sh end to end with SMOKE=1 (synthetic data, tiny sizes, 1 epoch), through
bash and the venv's ``nerveseg``, as a user would run it; its other branches (no GPU, a
refused step, OVERWRITE) with a recording stand-in for ``nerveseg``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import shellcheck

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "kaggle.sh"


def run_script(out: Path, script: Path = SCRIPT, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` with the venv's bin first on PATH and one torch thread per process."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "nerveseg").exists(), "the nerveseg console script is not installed"
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATA", "RECIPE", "FOLDS", "EPOCHS", "DEVICE", "CRF", "SMOKE",
                                "TRAIN_ARGS", "OVERWRITE", "CUDA_VISIBLE_DEVICES", "CLASSES",
                                "TEST", "IDS_FROM", "SIZE")}
    environment.update({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                        "OUT": str(out), "OMP_NUM_THREADS": "1", "NO_COLOR": "1",
                        "COLUMNS": "120", **env})
    return subprocess.run(["bash", str(script)], env=environment, capture_output=True,
                          text=True, timeout=600, cwd=out.parent)


Smoke = tuple[Path, subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    """One SMOKE run with the CRF."""
    out = tmp_path_factory.mktemp("kaggle") / "work"
    done = run_script(out, SMOKE="1", CRF="1", DEVICE="auto")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_smoke_run_writes_a_submission_in_sample_order(smoke: Smoke) -> None:
    out, done = smoke
    submission = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(out / "synth" / "sample_submission.csv", dtype=str,
                         keep_default_na=False)
    assert list(submission.columns) == ["img", "pixels"]
    assert submission["img"].tolist() == sample["img"].tolist()
    assert f"submission: {out}/submission.csv" in done.stderr
    assert "pass --label" not in done.stderr  # probability maps are no label maps


def test_smoke_run_leaves_every_step_behind(smoke: Smoke) -> None:
    out, _ = smoke
    folds = pd.read_csv(out / "folds.csv", dtype={"id": str})
    assert sorted(folds["fold"].unique()) == [0, 1]
    for k in (0, 1):
        assert (out / "runs" / f"fold{k}" / "model.safetensors").is_file()
        assert len(list((out / "test" / f"fold{k}").glob("*.png"))) == 4
    oof = sorted(p.stem for p in (out / "oof" / "probs").glob("*.png"))
    assert oof == sorted(folds["id"])  # every training image, out of fold
    assert sorted(p.stem for p in (out / "oof" / "crf").glob("*.png")) == oof
    assert (out / "test" / "ensemble" / "weights.csv").is_file()  # ASME
    assert len(list((out / "test" / "crf").glob("*.png"))) == 4
    for name in ("postprocess.json", "sweep.csv", "subjects.csv", "summary.json"):
        assert (out / "score" / name).is_file()


def test_a_second_run_refuses_to_overwrite_and_leaves_the_first(smoke: Smoke) -> None:
    """The real commands again on the smoke run's OUT: the first step refuses (exit 2), and
    nothing the first run wrote changes."""
    out, _ = smoke
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run_script(out, SMOKE="1", DEVICE="cpu")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# A recording stand-in for nerveseg: the real commands run in the smoke fixture above; the
# branches below are the script's own logic, which a stub exercises without training.
STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$CALLS"
if [[ "$1" == synth ]]; then mkdir -p "$2/train" "$2/test"; touch "$2/sample_submission.csv"; fi
if [[ "$1" == train ]]; then echo "epoch   1  (stub)" >&2; fi
if [[ "$1" == "${FAIL_AT:-}" ]]; then echo "error: $1 refused (stub)" >&2; exit 2; fi
"""


def run_with_stub(tmp_path: Path, name: str, **env: str) -> tuple[Path, list[str],
                                                                 subprocess.CompletedProcess]:
    """Run the script with the stub first on PATH; (OUT, the calls made, the result)."""
    bin_dir = tmp_path / "stub-bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "nerveseg").write_text(STUB)
        (bin_dir / "nerveseg").chmod(0o755)
    calls = tmp_path / f"{name}.calls"
    out = tmp_path / name
    done = run_script(out, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                      CALLS=str(calls), **env)
    return out, calls.read_text().splitlines() if calls.exists() else [], done


def test_every_step_runs_in_the_foreground_in_order(tmp_path: Path) -> None:
    """The folds train and predict one after the other in the foreground (their output on the
    terminal, no logs folder: the parallel fan-out is the workflow's), no CRF unless asked, no
    --overwrite unless OVERWRITE=1."""
    out, calls, done = run_with_stub(tmp_path, "work", SMOKE="1", DEVICE="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [c.split()[0] for c in calls] == ["synth", "dedupe", "split", "train", "train",
                                             "predict", "predict", "predict", "ensemble",
                                             "score", "rle-encode"]
    assert [c.split()[c.split().index("--fold") + 1] for c in calls if c.startswith("train")] \
        == ["0", "1"]
    assert all("--device cpu" in c for c in calls if c.startswith(("train", "predict")))
    assert "epoch   1" in done.stderr and not (out / "logs").exists()
    assert not any("--overwrite" in c for c in calls)
    _, again, done = run_with_stub(tmp_path, "again", SMOKE="1", DEVICE="cpu", OVERWRITE="1")
    assert done.returncode == 0 and all(c.endswith("--overwrite") for c in again)


def test_a_refused_step_stops_the_script_with_its_exit_code(tmp_path: Path) -> None:
    _, calls, done = run_with_stub(tmp_path, "work", SMOKE="1", DEVICE="cpu", FAIL_AT="split")
    assert done.returncode == 2 and "error: split refused" in done.stderr
    assert [c.split()[0] for c in calls] == ["synth", "dedupe", "split"]


def test_missing_data_is_one_clear_error(tmp_path: Path) -> None:
    done = run_script(tmp_path / "work")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: set DATA to the Kaggle folder (train/, test/, sample_submission.csv), or "
        "SMOKE=1 for a synthetic run"]
    done = run_script(tmp_path / "work2", DATA=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "nowhere/train not found" in done.stderr


def test_shellcheck_clean() -> None:
    done = subprocess.run([shellcheck(), str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout

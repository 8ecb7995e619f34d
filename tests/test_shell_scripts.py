"""The repository's other shell scripts pass shellcheck: benchmarks/ (the device calls and their
rehearsal), benchmarks/slurm/ (the one-node cluster of tests/workflow/test_slurm.py) and .ci/run.
examples/*.sh are linted beside their end-to-end tests (test_kaggle_script.py,
test_multiclass_script.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import shellcheck

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*REPO.glob("benchmarks/*.sh"), *REPO.glob("benchmarks/slurm/*.sh"),
                  REPO / ".ci" / "run"])


def test_shellcheck_clean() -> None:
    assert len(SCRIPTS) >= 7, SCRIPTS  # the glob found them
    done = subprocess.run([shellcheck(), *map(str, SCRIPTS)], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout

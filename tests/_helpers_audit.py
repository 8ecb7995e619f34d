"""Small helpers shared by test_dedupe.py and test_split.py (the dataset-audit commands)."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from nerveseg_cli.cli import app
from nerveseg_cli.synth import synth

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLI_ENV = {"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}


@dataclass
class Invocation:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


def nerveseg(*args: str | Path) -> Invocation:
    """Run ``nerveseg ARGS`` in-process; output with ANSI codes stripped."""
    result = CliRunner(env=CLI_ENV).invoke(app, [str(a) for a in args])
    return Invocation(result.exit_code, ANSI.sub("", result.stdout),
                      ANSI.sub("", result.stderr), result.exception)


def assert_bad_input(result: Invocation, *fragments: str) -> None:
    """Exit code 2, exactly one ``error:`` line (mentioning each fragment), no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def make_synth(root: Path, *, subjects: int = 4, per_subject: int = 10, seed: int = 3,
               size: tuple[int, int] = (64, 48)) -> Path:
    """A tiny synth dataset (Kaggle layout); returns its train/ folder."""
    synth(root, subjects=subjects, per_subject=per_subject, test=4, size=size, seed=seed,
          workers=1)
    return root / "train"


def planted_pairs(root: Path) -> list[tuple[str, str, str]]:
    with open(root / "planted_duplicates.csv", newline="") as handle:
        return [(row["id_a"], row["id_b"], row["kind"]) for row in csv.DictReader(handle)]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (to prove inputs unchanged)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}

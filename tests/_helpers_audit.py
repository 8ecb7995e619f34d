"""Small helpers shared by test_dedupe.py and test_split.py (the dataset-audit commands)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from nerveseg_cli.data.synth import synth
from tests.conftest import CliResult, assert_one_line_error, run_cli

nerveseg = run_cli


def assert_bad_input(result: CliResult, *fragments: str) -> None:
    """Exit code 2 and nothing on stderr but one ``error:`` line mentioning each fragment."""
    assert_one_line_error(result, *fragments)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, \
        result.stderr


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

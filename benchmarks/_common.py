"""Shared bits of the benchmark scripts: locating the real data, timing, reporting."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def kaggle_dir() -> Path | None:
    """The real Kaggle CSVs: $NERVESEG_KAGGLE_DATA, else ../shared/data/kaggle-nerve."""
    candidates = [os.environ.get("NERVESEG_KAGGLE_DATA"),
                  REPO.parent / "shared" / "data" / "kaggle-nerve"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train_masks.csv").is_file():
            return Path(candidate)
    return None


def require_kaggle() -> Path:
    found = kaggle_dir()
    if found is None:
        raise SystemExit("real data not found: set NERVESEG_KAGGLE_DATA to a folder holding "
                         "train_masks.csv (and sample_submission.csv); skipping")
    print(f"using real data in {found}")
    return found


@contextmanager
def timed(results: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    results[name] = time.perf_counter() - start


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    """A markdown table: benchmark, figure, reference figure, ratio/target."""
    lines = ["| benchmark | figure | reference | ratio / target |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report(rows: list[tuple[str, str, str, str]]) -> None:
    """Print :func:`markdown_table` after a blank line."""
    print("\n" + markdown_table(rows), end="")

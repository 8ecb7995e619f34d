"""Run every benchmark script in benchmarks/ with small settings and print one markdown table.

Each script prints its own table (benchmark, figure, reference, ratio / target) through
``_common.report``; this collects those rows under the script's name, so docs/performance.md
can reproduce one table. The small settings shrink inputs, never what is measured:

  bench_rle.py       the real Kaggle CSV (skipped, with the script's reason, when not found)
  bench_score.py     the real Kaggle CSV (likewise)
  bench_crf.py       --images 10 --repeats 1
  bench_ensemble.py  --images 100 --repeats 1
  bench_predict.py   --images 32
  bench_dedupe.py    --quick (1000 images instead of 5640)
  bench_train.py     --images 48 --epochs 2
  bench_isbi.py      only with --with-isbi (5 folds x 40 epochs x 2 methods: about 30 min on
                     2 CPU cores), with its own defaults

Run: .venv/bin/python benchmarks/run_all.py [--with-isbi] [--only NAME ...] [--full]
     (--full: every script with its own defaults; the default is the small settings above)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = "| benchmark | figure | reference | ratio / target |"
SMALL_ARGS: dict[str, list[str]] = {
    "bench_rle": [],
    "bench_score": [],
    "bench_crf": ["--images", "10", "--repeats", "1"],
    "bench_ensemble": ["--images", "100", "--repeats", "1"],
    "bench_predict": ["--images", "32"],
    "bench_dedupe": ["--quick"],
    "bench_train": ["--images", "48", "--epochs", "2"],
    "bench_isbi": [],
}
SLOW = {"bench_isbi"}  # run only when asked: --with-isbi


def scripts() -> list[str]:
    """Every benchmark script's name (``bench_*.py``), in a fixed order."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def table_rows(output: str) -> list[list[str]]:
    """The rows of the table a script printed with ``_common.report``."""
    lines = output.splitlines()
    try:
        start = lines.index(HEADER)
    except ValueError:
        return []
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def run_script(name: str, args: list[str], timeout: float) -> tuple[list[list[str]], str, float]:
    """Run one script; its table rows, a note when it printed none, and its wall time."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return [], f"stopped after {timeout:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    rows = table_rows(done.stdout)
    if rows and done.returncode == 0:
        return rows, "", seconds
    last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
    return rows, f"exit {done.returncode}: {last}", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-isbi", action="store_true",
                        help="also run bench_isbi.py (about 30 minutes on 2 CPU cores)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these scripts (bench_rle or rle ...)")
    parser.add_argument("--full", action="store_true",
                        help="each script with its own defaults instead of the small settings")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds allowed to each script")
    args = parser.parse_args()
    chosen = scripts()
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = sorted(wanted - set(chosen))
        if unknown:
            parser.error(f"no benchmark {', '.join(unknown)} (have: {', '.join(chosen)})")
        chosen = [n for n in chosen if n in wanted]
    elif not args.with_isbi:
        chosen = [n for n in chosen if n not in SLOW]

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start",
          flush=True)
    table: list[list[str]] = []
    for name in chosen:
        script_args = [] if args.full else SMALL_ARGS.get(name, [])
        print(f"running {name}.py {' '.join(script_args)} ...", file=sys.stderr, flush=True)
        rows, note, seconds = run_script(name, script_args, args.timeout)
        short = name.removeprefix("bench_")
        table += [[short, *row] for row in rows]
        if note:
            table.append([short, f"no figures: {note}", "-", "-", "-"])
        print(f"  {name}: {len(rows)} rows in {seconds:.0f} s{' (' + note + ')' if note else ''}",
              file=sys.stderr, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other processes slow every "
          "figure)")
    print("\n| script | benchmark | figure | reference | ratio / target |")
    print("|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

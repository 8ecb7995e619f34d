"""Several classes: one 3-class model against two binary ones, the epoch cost of classes, and
multi-class scoring speed.

1. On usgra-seg (real regional-anaesthesia ultrasound, 0 background, 1 nerve, 2 vessel): k-fold
   cross-validation (folds from ``split --classes``, stratified on each class), scratch
   encoder, 256x256, the same options and epochs for all: one model with
   ``--classes background,nerve,vessel`` against two binary models (``--label 1``, the nerve;
   ``--label 2``, the vessel). Figures: each class's validation Dice (Kaggle per image,
   empty-on-empty 1) at each run's best epoch, averaged over folds, and the training wall
   times. Target: the 3-class model at least as good on each class, in about half the time.
   Beside it the Dice at the last epoch (no checkpoint selection: picking the best of 20 noisy
   epochs favours the binary runs, each picking for its own class) and, with ``--seeds``, the
   runs repeated per seed, with the standard error of the per-fold gap.
2. The epoch cost: a 3-class epoch against a binary epoch of the same model and size (from
   the runs above). Target: at most 1.1x.
3. ``nerveseg score`` on 5000 pairs of 3-class label maps (580x420, a folder of label maps
   scored with ``--classes 3``), through the command. Target: at least 300 pairs/s.

Run: .venv/bin/python benchmarks/bench_multiclass.py [--epochs 10] [--folds 5] [--size 256]
     [--only cv|score] [--pairs 5000] [--set KEY=VALUE ...] (extra train options)
     [--set-classes KEY=VALUE ...] (extra train options of the 3-class runs only, e.g.
     decoders=shared, the one decoder of the defaults before per-class)
     [--jobs 2] (runs at once, the cores shared out) [--work DIR] (keep runs; resumable)
     [--seeds 0,1,2] (each run once per seed) [--results-out FILE] (each finished run
     appended there too, as it finishes: benchmarks/device_multiclass.sh's $OUT)
Data: --data DIR, else $NERVESEG_USGRA_DATA or ../shared/data/usgra-seg (part 1 is skipped
without it); DIR may be any 3-class image set (`nerveseg synth --classes 3`'s train folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, report  # noqa: E402

CLASSES = "background,nerve,vessel"


def usgra_dir() -> Path | None:
    for candidate in (os.environ.get("NERVESEG_USGRA_DATA"),
                      REPO.parent / "shared" / "data" / "usgra-seg"):
        if candidate and (Path(candidate) / "masks").is_dir():
            return Path(candidate)
    return None


def make_folds(data: Path, folds: int, out: Path) -> Path:
    from nerveseg_cli.classes import Classes
    from nerveseg_cli.data.split import split, write_split

    path = out / "folds.csv"  # the same folds on every call (seed 0), so --work can resume
    write_split(split(data, folds=folds, seed=0, classes=Classes.parse(CLASSES)), path,
                overwrite=True)
    return path


TASKS = {"3-class": {"classes": CLASSES}, "nerve": {"label": 1}, "vessel": {"label": 2}}


def train_run(manifest: Path, fold: int, name: str, out: Path, settings: dict) -> dict:
    """Train one run of a task; its best metrics row, wall time and median epoch time."""
    from nerveseg_cli.train.engine import train
    from nerveseg_cli.train.resolution import resolve_train_options

    given = {"manifest": str(manifest), "fold": str(fold), **settings, **TASKS[name]}
    options = resolve_train_options(given, explicit=set(given)).options
    start = time.perf_counter()
    train(options, out, overwrite=True)
    wall = time.perf_counter() - start
    metrics = pd.read_csv(out / "metrics.csv")
    best = metrics.loc[metrics["val_dice"].idxmax()]
    return {"fold": fold, "task": name, "seed": int(settings.get("seed", 0)), "wall": wall,
            "epoch_seconds": float(metrics["seconds"].median()),
            "best": {k: float(v) for k, v in best.items()},
            "last": {k: float(v) for k, v in metrics.iloc[-1].items()}}


def run_all(manifest: Path, work: Path, args: argparse.Namespace) -> list[dict]:
    """Every (fold, task) run, ``--jobs`` at a time (each with its share of the cores), runs
    finished by an earlier call in ``work`` read back from results.jsonl instead of rerun;
    each finished run is appended to results.jsonl (and ``--results-out``) at once."""
    import concurrent.futures
    import multiprocessing

    from nerveseg_cli.device import available_cores

    results_file = work / "results.jsonl"
    settings = {"epochs": args.epochs, "size": f"{args.size}x{args.size}",
                "device": args.device, "workers": 2, "save_every": "end",
                "threads": max(1, available_cores() // args.jobs), **args.extra}
    # a task's settings (the 3-class runs' own options joined) are its runs' key, the seed
    # apart, so binary runs are reused by a call that changes only --set-classes
    task_settings = {name: {**settings, **(args.class_extra if name == "3-class" else {})}
                     for name in TASKS}
    keys = {name: json.dumps(task_settings[name], sort_keys=True) for name in TASKS}
    done = [r for r in map(json.loads, results_file.read_text().splitlines())
            if r["settings"] == keys[r["task"]]] if results_file.exists() else []
    todo = [(seed, fold, name) for seed in args.seeds for fold in range(args.folds)
            for name in TASKS
            if not any((r["fold"], r["task"], r.get("seed", 0)) == (fold, name, seed)
                       for r in done)]
    context = multiprocessing.get_context("spawn")  # no fork after torch's threads started
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(train_run, manifest, fold, name, work / run_name(name, fold, seed,
                                                                        args.class_extra),
                               {**task_settings[name], "seed": seed})
                   for seed, fold, name in todo]
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            result["settings"] = keys[result["task"]]
            done.append(result)
            for path in filter(None, (results_file, args.results_out)):
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(result) + "\n")
            best = result["best"]
            classes = (f" (nerve {best['dice_nerve']:.4f}, vessel {best['dice_vessel']:.4f})"
                       if result["task"] == "3-class" else "")
            print(f"fold {result['fold']} seed {result['seed']} {result['task']}: best val Dice "
                  f"{best['val_dice']:.4f}{classes} at epoch {int(best['epoch'])}, "
                  f"{result['wall']:.0f} s, {result['epoch_seconds']:.1f} s/epoch", flush=True)
    return [r for r in sorted(done, key=lambda r: (r["fold"], list(TASKS).index(r["task"])))
            if r.get("seed", 0) in args.seeds and r["fold"] < args.folds]


def run_name(task: str, fold: int, seed: int, class_extra: dict) -> str:
    """The run's folder in --work: task, fold, seed, and the 3-class runs' own options."""
    own = "".join(f"-{k}={v}" for k, v in class_extra.items()) if task == "3-class" else ""
    return f"{task}-{fold}" + (f"-s{seed}" if seed else "") + own


def cross_validation(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str, str]]:
    data = args.data or usgra_dir()
    if data is None:
        print("usgra-seg not found (set NERVESEG_USGRA_DATA); skipping the cross-validation")
        return []
    print(f"using {data}")
    name = "usgra" if "usgra" in str(data).lower() else str(data)  # a row's data set
    work.mkdir(parents=True, exist_ok=True)
    manifest = make_folds(data, args.folds, work)
    results = run_all(manifest, work, args)
    wall = dict.fromkeys(TASKS, 0.0)
    epoch: dict[str, list[float]] = {name: [] for name in TASKS}
    for result in results:
        wall[result["task"]] += result["wall"] / len(args.seeds)
        epoch[result["task"]].append(result["epoch_seconds"])
    best, last = fold_dice(results, "best", args.folds), fold_dice(results, "last", args.folds)
    binary_wall = wall["nerve"] + wall["vessel"]
    binary_epoch = float(np.median(epoch["nerve"] + epoch["vessel"]))
    class_epoch = float(np.median(epoch["3-class"]))
    print(json.dumps({"per_fold_best": {k: list(v) for k, v in best.items()},
                      "per_fold_last": {k: list(v) for k, v in last.items()},
                      "wall_s": wall, "epoch_s": {"3-class": class_epoch,
                                                  "binary": binary_epoch}}, indent=1))
    seeds = f", {len(args.seeds)} seeds" if len(args.seeds) > 1 else ""
    setting = f"{args.folds}-fold{seeds}, {args.epochs} epochs, {args.size}px"
    rows = []
    for at, figures in (("best epoch", best), ("last epoch", last)):
        for c in ("nerve", "vessel"):
            ours, theirs = figures[f"3-class {c}"], figures[f"binary {c}"]
            gaps = ours - theirs
            spread = gaps.std(ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
            rows.append((f"{name} {c} Dice at the {at} ({setting})",
                         f"{ours.mean():.4f} (3-class)", f"{theirs.mean():.4f} (binary)",
                         f"{gaps.mean():+.4f} ± {spread:.4f} s.e. (target >= 0; 3-class ahead "
                         f"or level in {int((gaps >= 0).sum())} folds of {len(gaps)})"))
    return rows + [
        (f"{name} training wall time", f"{wall['3-class']:.0f} s (one 3-class model)",
         f"{binary_wall:.0f} s (two binary)",
         f"{wall['3-class'] / binary_wall:.2f}x (target ~0.5x)"),
        (f"epoch, 3 classes vs binary ({args.size}px)", f"{class_epoch:.2f} s",
         f"{binary_epoch:.2f} s", f"{class_epoch / binary_epoch:.2f}x (target <= 1.1x)"),
    ]


def fold_dice(results: list[dict], at: str, folds: int) -> dict[str, np.ndarray]:
    """Each class's Dice per fold (the mean over seeds) of the 3-class and binary runs, at the
    best or last epoch; runs from before last-epoch figures were kept count at neither."""
    figures: dict[str, list[list[float]]] = {
        f"{kind} {c}": [[] for _ in range(folds)]
        for kind in ("3-class", "binary") for c in ("nerve", "vessel")}
    for result in results:
        row = result.get(at)
        if row is None:
            continue
        if result["task"] == "3-class":
            for c in ("nerve", "vessel"):
                figures[f"3-class {c}"][result["fold"]].append(row[f"dice_{c}"])
        else:
            figures[f"binary {result['task']}"][result["fold"]].append(row["val_dice"])
    return {k: np.array([np.mean(v) if v else np.nan for v in per_fold])
            for k, per_fold in figures.items()}


def write_label_maps(truth: Path, pred: Path, count: int, seed: int, noise: float) -> None:
    """``count`` pairs of 580x420 label maps of 3 classes: the truth, a nerve ellipse and a
    vessel disc where they are present, and a prediction with a fraction ``noise`` of its
    pixels relabelled."""
    import cv2

    from nerveseg_cli.io.outputs import write_label_map

    rng = np.random.default_rng(seed)
    truth.mkdir(parents=True)
    pred.mkdir(parents=True)
    for i in range(count):
        labels = np.zeros((420, 580), np.uint8)
        if rng.random() < 0.6:
            cv2.ellipse(labels, (int(rng.integers(100, 480)), int(rng.integers(100, 320))),
                        (int(rng.integers(20, 60)), int(rng.integers(15, 40))), 0, 0, 360, 1, -1)
        if rng.random() < 0.5:
            cv2.circle(labels, (int(rng.integers(60, 520)), int(rng.integers(60, 360))),
                       int(rng.integers(10, 35)), 2, -1)
        write_label_map(truth / f"{i + 1}.png", labels)
        flip = rng.random(labels.shape) < noise
        labels[flip] = rng.integers(0, 3, int(flip.sum()))
        write_label_map(pred / f"{i + 1}.png", labels)


def score_speed(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str, str]]:
    truth, pred = work / "truth", work / "pred"
    write_label_maps(truth, pred, args.pairs, 1, 0.0005)
    command = [sys.executable, "-m", "nerveseg_cli", "score", str(pred), str(truth),
               "--classes", "3", "--workers", str(args.workers), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    rate = args.pairs / seconds
    print(f"score: {args.pairs} pairs in {seconds:.1f} s ({rate:.0f} pairs/s)")
    return [(f"score {args.pairs} 3-class label-map pairs (command, 580x420)",
             f"{rate:.0f} pairs/s", "300 pairs/s", f"{rate / 300:.2f}x (target >= 1)")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--only", choices=("cv", "score"))
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, each with its share of the cores")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here; a second call reuses the finished ones")
    parser.add_argument("--seeds", default="0", help="comma-separated; each run per seed")
    parser.add_argument("--data", type=Path, default=None,
                        help="the 3-class image set [usgra-seg: $NERVESEG_USGRA_DATA, else "
                        "../shared/data/usgra-seg]")
    parser.add_argument("--results-out", type=Path, default=None,
                        help="also append each finished run here, as it finishes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-classes", action="append", default=[], metavar="KEY=VALUE",
                        help="a train option of the 3-class runs only")
    args = parser.parse_args()
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.extra, args.class_extra = parse_settings(args.set), parse_settings(args.set_classes)
    if "seed" in args.extra:
        parser.error("give seeds with --seeds, not --set seed=")
    return args


def parse_settings(items: list[str]) -> dict:
    """KEY=VALUE pairs; numbers, booleans and JSON values decoded, other values kept as text."""
    settings = {}
    for item in items:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return settings


def main() -> None:
    args = parse_args()
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "score"):
            rows += score_speed(args, work / "score")
        if args.only in (None, "cv"):
            rows += cross_validation(args, args.work or work / "cv")
    report(rows)


if __name__ == "__main__":
    main()

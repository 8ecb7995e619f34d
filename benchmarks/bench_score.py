"""Scoring speed on the real Kaggle masks.

Ground truth: the 5635 masks of train_masks.csv. Predictions: each mask shifted by a few pixels,
with every 7th prediction emptied and every 11th empty mask given a false blob, so every code
path (overlap, misses, false positives, empty-on-empty) is exercised.

1. In memory: score 5635 mask pairs in under 3 s (against a plain numpy per-pair reference).
2. File path: `score` over 5635 PNG pairs at 300 pairs/s or more.

Run: .venv/bin/python benchmarks/bench_score.py [--workers N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, require_kaggle  # noqa: E402

from nerveseg_cli.evaluation.score import counts_from_histograms, score, summarize, value_histograms
from nerveseg_cli.io.kaggle_csv import parse_table, read_rle_csv  # noqa: E402
from nerveseg_cli.io.outputs import write_mask  # noqa: E402
from nerveseg_cli.io.rle import runs_to_mask  # noqa: E402

WIDTH, HEIGHT = 580, 420


def make_prediction(index: int, truth: np.ndarray) -> np.ndarray:
    pred = np.roll(truth, (3, 5), axis=(0, 1))
    if index % 7 == 0:
        pred = np.zeros_like(pred)
    elif not truth.any() and index % 11 == 0:
        pred = pred.copy()
        pred[100:160, 200:280] = True
    return pred


def reference_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * (pred & truth).sum() / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    data = require_kaggle()
    runs = parse_table(read_rle_csv(data / "train_masks.csv"), (WIDTH, HEIGHT))
    ids = list(runs)

    def truth_of(sample_id: str) -> np.ndarray:
        return np.ascontiguousarray(runs_to_mask(*runs[sample_id], HEIGHT, WIDTH))

    # Pairs are built outside the timed region, a few hundred at a time to bound memory.
    ours_s = reference_s = 0.0
    truth_hists, all_hists, reference = [], [], []
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start : chunk_start + 500]
        truths = [truth_of(i) for i in chunk]
        preds = [make_prediction(chunk_start + k, t).astype(np.uint8) * 255
                 for k, t in enumerate(truths)]
        start = time.perf_counter()
        for values, truth in zip(preds, truths, strict=True):
            truth_hist, all_hist = value_histograms(values, truth)
            truth_hists.append(truth_hist)
            all_hists.append(all_hist)
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        reference.extend(reference_dice(p > 127, t) for p, t in zip(preds, truths, strict=True))
        reference_s += time.perf_counter() - start
    start = time.perf_counter()
    summary = summarize(counts_from_histograms(np.stack(truth_hists), np.stack(all_hists), 127))
    ours_s += time.perf_counter() - start
    agree = abs(summary["dice"] - float(np.mean(reference))) < 1e-9
    print(f"in memory: {len(ids)} pairs in {ours_s:.2f} s (reference {reference_s:.2f} s), "
          f"mean Dice {summary['dice']:.4f}, agrees with reference: {agree}")

    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp) / "gt", Path(tmp) / "pred"
        for index, sample_id in enumerate(ids):
            truth = truth_of(sample_id)
            write_mask(gt_dir / f"{sample_id}.png", truth)
            write_mask(pred_dir / f"{sample_id}.png", make_prediction(index, truth))
        start = time.perf_counter()
        result = score(pred_dir, gt_dir, workers=args.workers)
        files_s = time.perf_counter() - start
    rate = len(ids) / files_s
    print(f"file path: {len(ids)} PNG pairs in {files_s:.2f} s, {rate:.0f} pairs/s, "
          f"mean Dice {result.summary['dice']:.4f}")

    report([
        (f"score {len(ids)} mask pairs in memory", f"{ours_s:.2f} s",
         f"{reference_s:.2f} s (numpy per pair, Dice only)", "target < 3 s"),
        (f"score over {len(ids)} PNG pairs", f"{rate:.0f} pairs/s", "-", ">= 300 pairs/s"),
    ])
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

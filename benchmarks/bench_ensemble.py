"""Ensemble speed: images/s for ``mean`` and ``asme`` over 5 members of 500 580x420 maps.

Members: the first 500 masks of the real train_masks.csv when found (else synth ellipses), each
blurred with a member-specific sigma and shifted a few pixels, written as probability PNGs;
member 5 is an outlier (shifted 40 px) so ASME has something to discount.

Each figure is the whole command (read 5 PNGs per image, merge, write one PNG; ASME also
binarises, builds the 5x5 Dice matrix and solves it) against a plain reference: a sequential
loop of cv2.imread, numpy in float64 (for ASME, Dice pair by pair and numpy.linalg.eig) and
cv2.imwrite.

Each side runs --repeats times, alternating, and keeps its best time (the machine may be shared).

Run: .venv/bin/python benchmarks/bench_ensemble.py [--images 500] [--workers 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import kaggle_dir, report  # noqa: E402

from nerveseg_cli.inference.ensemble import ensemble  # noqa: E402
from nerveseg_cli.inference.merging import MergeRule  # noqa: E402
from nerveseg_cli.io.kaggle_csv import parse_table, read_rle_csv  # noqa: E402
from nerveseg_cli.io.parallel import thread_map  # noqa: E402
from nerveseg_cli.io.probmaps import read_probability_values, write_probability  # noqa: E402
from nerveseg_cli.io.rle import runs_to_mask  # noqa: E402

WIDTH, HEIGHT = 580, 420
MEMBERS = 5


def masks(count: int) -> tuple[list[np.ndarray], str]:
    data = kaggle_dir()
    if data is not None:
        runs = parse_table(read_rle_csv(data / "train_masks.csv"), (WIDTH, HEIGHT))
        ids = list(runs)[:count]
        return [np.ascontiguousarray(runs_to_mask(*runs[i], HEIGHT, WIDTH)) for i in ids], \
            "real train_masks.csv"
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    result = []
    for k in range(count):
        if k % 2:
            result.append(np.zeros((HEIGHT, WIDTH), dtype=bool))
            continue
        cy, cx = rng.uniform(100, 320), rng.uniform(120, 460)
        result.append(((ys - cy) / 40) ** 2 + ((xs - cx) / 60) ** 2 <= 1)
    return result, "synth ellipses"


def member_map(truth: np.ndarray, member: int) -> np.ndarray:
    soft = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 3 + member)
    shift = (40, 40) if member == MEMBERS - 1 else (member, -member)
    return np.roll(soft, shift, axis=(0, 1))


def reference_mean(paths: list[Path], out: Path) -> None:
    stack = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]) / 255.0
    cv2.imwrite(str(out), np.floor(stack.mean(axis=0) * 255 + 0.5).astype(np.uint8))


def reference_asme(paths: list[Path], out: Path, base: float = 100.0) -> None:
    stack = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]) / 255.0
    binary = stack > 0.5
    n = len(paths)
    similarity = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            total = binary[i].sum() + binary[j].sum()
            similarity[i, j] = 1.0 if total == 0 else 2 * (binary[i] & binary[j]).sum() / total
    eigenvalues, eigenvectors = np.linalg.eig(similarity)
    vector = np.abs(eigenvectors[:, np.argmax(eigenvalues.real)].real)
    weights = base ** vector / (base ** vector).sum()
    merged = np.tensordot(weights, stack, axes=1)
    cv2.imwrite(str(out), np.floor(merged * 255 + 0.5).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    truths, source = masks(args.images)
    print(f"input: {source}, {len(truths)} images x {MEMBERS} members; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        members = [tmp / f"member{k}" for k in range(MEMBERS)]
        ids = [str(k + 1) for k in range(len(truths))]

        def write(k: int) -> None:
            for m, member in enumerate(members):
                write_probability(member / f"{ids[k]}.png", member_map(truths[k], m))

        list(thread_map(write, range(len(truths)), 4))
        for method, reference in (("mean", reference_mean), ("asme", reference_asme)):
            (tmp / f"ref_{method}").mkdir()
            ours = plain = float("inf")
            for _ in range(args.repeats):  # alternate, keep the best of each
                start = time.perf_counter()
                ensemble(members, tmp / f"out_{method}", MergeRule(method),
                         workers=args.workers, overwrite=True)
                ours = min(ours, time.perf_counter() - start)
                start = time.perf_counter()
                for sample_id in ids:
                    reference([m / f"{sample_id}.png" for m in members],
                              tmp / f"ref_{method}" / f"{sample_id}.png")
                plain = min(plain, time.perf_counter() - start)
            worst = max(int(np.abs(
                read_probability_values(tmp / f"out_{method}" / f"{i}.png").astype(int)
                - read_probability_values(tmp / f"ref_{method}" / f"{i}.png")).max())
                for i in ids[:50])
            print(f"{method}: {len(ids) / ours:.0f} images/s ({ours:.2f} s); plain reference "
                  f"{len(ids) / plain:.0f} images/s ({plain:.2f} s); max difference from "
                  f"the reference on 50 images: {worst} level(s)")
            rows.append((f"`ensemble --method {method}`, {MEMBERS} x {len(ids)} maps",
                         f"{len(ids) / ours:.0f} images/s",
                         f"{len(ids) / plain:.0f} images/s (sequential numpy float64)",
                         f"{plain / ours:.2f}x"))
    report(rows)


if __name__ == "__main__":
    main()

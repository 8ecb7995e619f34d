"""RLE speed on the real Kaggle train_masks.csv.

1. In memory: decode all 5635 rows and re-encode them; the output must be byte-identical,
   at least 50x faster than a plain per-pixel Python encoder and under 2 s.
2. File path: `rle-encode` over a folder of 5508 mask PNGs (decoded from the real CSV) at
   300 masks/s or more.

Run: .venv/bin/python benchmarks/bench_rle.py [--workers N]
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

from nerveseg_cli.io.kaggle_csv import format_rle_csv, parse_table, read_rle_csv
from nerveseg_cli.io.rle import rle_encode, runs_to_mask
from nerveseg_cli.submission.codec import decode_csv_to_folder, encode_folder

WIDTH, HEIGHT = 580, 420


def reference_encode(mask: np.ndarray) -> str:
    """The plain per-pixel reference: visit pixels column by column in Python."""
    runs: list[list[int]] = []
    previous = False
    for x in range(mask.shape[1]):
        for y in range(mask.shape[0]):
            value = bool(mask[y, x])
            if value and not previous:
                runs.append([x * mask.shape[0] + y + 1, 0])
            if value:
                runs[-1][1] += 1
            previous = value
    return " ".join(f"{s} {n}" for s, n in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reference-masks", type=int, default=25,
                        help="masks timed with the slow reference (its rate is extrapolated)")
    args = parser.parse_args()
    data = require_kaggle()
    csv_path = data / "train_masks.csv"
    original = csv_path.read_bytes()

    # Each mask is decoded and re-encoded in turn: holding all 5635 decoded masks at once
    # (1.4 GB) would time page faults, not the codec.
    start = time.perf_counter()
    table = read_rle_csv(csv_path)
    runs = parse_table(table, (WIDTH, HEIGHT))
    encoded = {i: rle_encode(runs_to_mask(s, n, HEIGHT, WIDTH)) for i, (s, n) in runs.items()}
    text = format_rle_csv(encoded, "train")
    total_s = time.perf_counter() - start
    identical = text.encode() == original.replace(b"\r\n", b"\n")
    print(f"{len(encoded)} rows decoded and re-encoded in {total_s:.3f} s, "
          f"byte-identical: {identical}")

    ids = list(runs)[:: max(1, len(runs) // args.reference_masks)][: args.reference_masks]
    sample = [runs_to_mask(*runs[i], HEIGHT, WIDTH) for i in ids]
    start = time.perf_counter()
    for mask in sample:
        reference_encode(mask)
    reference_per_mask = (time.perf_counter() - start) / len(sample)
    start = time.perf_counter()
    for mask in sample:
        rle_encode(mask)
    ours_per_mask = (time.perf_counter() - start) / len(sample)
    speedup = reference_per_mask / ours_per_mask
    print(f"encode per mask: ours {ours_per_mask * 1e6:.0f} us, reference "
          f"{reference_per_mask * 1e3:.1f} ms ({speedup:.0f}x)")

    with tempfile.TemporaryDirectory() as tmp:
        folder, sub = Path(tmp) / "masks", Path(tmp) / "sub.csv"
        decode_csv_to_folder(csv_path, folder, size=(WIDTH, HEIGHT), workers=args.workers)
        for extra in sorted(folder.glob("*.png"))[5508:]:
            extra.unlink()
        count = len(list(folder.glob("*.png")))
        start = time.perf_counter()
        encode_folder(folder, sub, fmt="train", workers=args.workers)
        folder_s = time.perf_counter() - start
    rate = count / folder_s
    print(f"rle-encode over {count} mask PNGs: {folder_s:.2f} s, {rate:.0f} masks/s")

    report([
        ("decode + re-encode 5635 rows in memory", f"{total_s:.2f} s",
         "byte-identical" if identical else "NOT IDENTICAL", "target < 2 s"),
        ("encode one 580x420 mask", f"{ours_per_mask * 1e6:.0f} us",
         f"{reference_per_mask * 1e3:.1f} ms (per-pixel Python)", f"{speedup:.0f}x (>= 50x)"),
        (f"rle-encode folder of {count} PNGs", f"{rate:.0f} masks/s", "-", ">= 300 masks/s"),
    ])
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

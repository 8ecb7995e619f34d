"""Dedupe speed, memory and scaling on synth data (issue 3, Performance).

1. `nerveseg dedupe` over 5640 images of 580x420 (`synth --subjects 47 --per-subject 120`):
   at most 60 s wall on 2 cores including decoding (and Python start-up), `--scope all` at most
   1.5x the subject-scope time, peak memory (max RSS of the process) under 2 GB.
2. Scaling at 1000, 5000 (the first images of that set, through manifests) and 20000 images
   (a second synth set, only with --full: it takes ~4 minutes and ~5 GB of disk to make).
3. At 1000 images, at least 50x faster than a plain all-pairs pixel-difference reference:
   decode every image, then mean |a - b| for every pair in a Python loop. By default the loop
   is timed on a random sample of pairs and extrapolated; --full times all 499,500 pairs.
4. Where the time goes on the 5640 set: decoding + fingerprints, exact pairs, near search by
   subject and across all, mask Dice.

Every timed command runs in a fresh child process, so its max RSS is its own.
--quick measures the same figures on a 1000-image set (10 subjects x 100) instead of 5640, with
the time target scaled to its size and no 5000-image scaling step (benchmarks/run_all.py).
Run: .venv/bin/python benchmarks/bench_dedupe.py [--full | --quick] [--cache DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, report  # noqa: E402

from nerveseg_cli.io.datasets import discover_images, write_manifest  # noqa: E402
from nerveseg_cli.io.images import read_image  # noqa: E402

SPEC_SET = (47, 120)  # subjects, frames per subject: 5640 images
BIG_SET = (160, 125)  # 20000 images
QUICK_SET = (10, 100)  # 1000 images, for --quick
REFERENCE_IMAGES = 1000
REFERENCE_SAMPLE_PAIRS = 20_000


def synth_set(cache: Path, subjects: int, per_subject: int, workers: int) -> Path:
    """A synth dataset's train/ folder, made once per cache folder."""
    from nerveseg_cli.data.synth import synth

    root = cache / f"synth-{subjects}x{per_subject}"
    if not (root / "planted_duplicates.csv").is_file():
        print(f"making {subjects * per_subject} synth images in {root} ...", flush=True)
        start = time.perf_counter()
        synth(root, subjects=subjects, per_subject=per_subject, test=0, seed=0,
              overwrite=True, workers=workers)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return root / "train"


def first_images(train: Path, count: int, folder: Path) -> Path:
    """A manifest of the first ``count`` images of a set (numeric id order)."""
    path = folder / f"first-{count}.csv"
    write_manifest(path, discover_images(train)[:count])
    return path


def run_child(args: list[str]) -> dict:
    """Run this script's child mode in a fresh interpreter; wall time includes start-up."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                          capture_output=True, text=True, cwd=REPO)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    measured["process_wall_s"] = time.perf_counter() - start
    return measured


def child(args: list[str]) -> None:
    """Child mode: ``cli ARGS...`` runs nerveseg; ``stages DATA WORKERS`` times the library."""
    start = time.perf_counter()
    extra: dict = {}
    if args[0] == "cli":
        from nerveseg_cli.cli import app

        try:
            app(args[1:], prog_name="nerveseg", standalone_mode=False)
        except SystemExit as exc:  # pragma: no cover - a failure is a benchmark error
            if exc.code:
                raise
        summary = json.loads((Path(args[args.index("--out") + 1]) / "summary.json")
                             .read_text())
        extra = {k: summary[k] for k in ("images", "exact_pairs", "near_pairs",
                                         "conflicting_pairs", "dropped")}
    else:
        extra = stages(Path(args[1]), int(args[2]))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": time.perf_counter() - start,
                      "cpu_s": usage.ru_utime + usage.ru_stime,  # includes interpreter start
                      "max_rss_mb": usage.ru_maxrss / 1024, **extra}))


def stages(data: Path, workers: int) -> dict:
    from nerveseg_cli.data import dedupe as d

    times: dict[str, float] = {}
    samples = discover_images(data)
    start = time.perf_counter()
    prints = d.fingerprint_images(samples, workers=workers)
    times["decode + fingerprints"] = time.perf_counter() - start
    start = time.perf_counter()
    a, b = d.pairs_within_classes(prints.digests)
    times["exact pairs (hash classes)"] = time.perf_counter() - start
    subjects = [s.subject for s in samples]
    for scope in ("subject", "all"):
        start = time.perf_counter()
        groups = d.comparison_groups(subjects, prints.shapes, scope)
        near_a, near_b, _ = d.near_pairs(prints.signatures, groups, d.DEFAULT_NEAR_THRESHOLD)
        times[f"near search, scope {scope}"] = time.perf_counter() - start
    start = time.perf_counter()
    d.pair_mask_dice(prints, np.r_[a, near_a], np.r_[b, near_b])
    times["mask Dice of the pairs"] = time.perf_counter() - start
    signature_mb = prints.signatures.nbytes / 2**20
    mask_mb = sum(p.nbytes for p in prints.packed_masks if p is not None) / 2**20
    return {"stages": times, "signatures_mb": signature_mb, "packed_masks_mb": mask_mb}


def reference_all_pairs(train: Path, count: int, sample_pairs: int | None) -> dict:
    """Decode ``count`` images, then mean |a - b| for every pair (or a timed sample of pairs)."""
    paths = [s.image for s in discover_images(train)[:count]]
    start, cpu_start = time.perf_counter(), time.process_time()
    images = [read_image(p) for p in paths]
    decode_s = time.perf_counter() - start
    decode_cpu_s = time.process_time() - cpu_start
    n = len(images)
    all_pairs = n * (n - 1) // 2
    if sample_pairs is None:
        pairs = ((i, j) for i in range(n) for j in range(i + 1, n))
        timed_pairs = all_pairs
    else:
        rng = np.random.default_rng(0)
        i = rng.integers(0, n - 1, sample_pairs)
        j = i + 1 + (rng.random(sample_pairs) * (n - 1 - i)).astype(np.int64)
        pairs = zip(i.tolist(), j.tolist(), strict=True)
        timed_pairs = sample_pairs
    identical = 0
    start = time.perf_counter()
    for i, j in pairs:
        difference = float(np.abs(images[i].astype(np.int16) - images[j]).mean())
        identical += difference == 0.0
    loop_s = time.perf_counter() - start
    loop_cpu_s = time.process_time() - cpu_start - decode_cpu_s
    scale = all_pairs / timed_pairs
    return {"decode_s": decode_s, "pairs_timed": timed_pairs, "loop_s": loop_s,
            "all_pairs_s": loop_s * scale, "identical": identical,
            "cpu_s": decode_cpu_s + loop_cpu_s * scale,
            "extrapolated": sample_pairs is not None}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="also 20000 images, and the reference over all pairs")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the synth sets here between runs (default: a temp folder)")
    parser.add_argument("--quick", action="store_true",
                        help="1000 images instead of 5640 (same figures, scaled target)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    if args.quick and args.full:
        parser.error("--quick and --full exclude each other")
    subjects, per_subject = QUICK_SET if args.quick else SPEC_SET
    n_spec = subjects * per_subject
    target_s = 60 * n_spec / 5640
    print(f"{os.cpu_count()} CPUs; workers {args.workers}; load average before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-dedupe-") as temp:
        cache = args.cache or Path(temp)
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(temp)
        spec = synth_set(cache, subjects, per_subject, args.workers)
        rows: list[tuple[str, str, str, str]] = []

        def dedupe(data: Path, scope: str, tag: str) -> dict:
            out = scratch / f"out-{tag}-{scope}"
            result = run_child(["cli", "dedupe", str(data), "--out", str(out), "--overwrite",
                                "--scope", scope, "--workers", str(args.workers)])
            print(f"  {tag} scope {scope}: {result}", flush=True)
            return result

        spec_runs = {scope: dedupe(spec, scope, str(n_spec)) for scope in ("subject", "all")}
        subject_s = spec_runs["subject"]["process_wall_s"]
        all_s = spec_runs["all"]["process_wall_s"]
        rows.append((f"dedupe {n_spec} images 580x420, scope subject (process wall)",
                     f"{subject_s:.1f} s", f"target {target_s:.3g} s",
                     f"{subject_s / target_s:.2f} of target"))
        rows.append((f"dedupe {n_spec}, scope all (process wall)", f"{all_s:.1f} s",
                     f"{subject_s:.1f} s (subject)", f"{all_s / subject_s:.2f}x (target 1.5x)"))
        peak = max(run["max_rss_mb"] for run in spec_runs.values())
        rows.append((f"peak memory (max RSS), {n_spec} images", f"{peak:.0f} MB",
                     "target 2048 MB", f"{peak / 2048:.2f} of target"))
        found = spec_runs["subject"]
        rows.append((f"pairs found in {n_spec} ({subjects} subjects x 2 planted)",
                     f"{found['exact_pairs']} exact, {found['near_pairs']} near",
                     f"{subjects} exact, {subjects} near",
                     "all planted" if found["exact_pairs"] == subjects
                     and found["near_pairs"] == subjects else "MISMATCH"))

        sizes = [1000] if args.quick else [1000, 5000]
        sets = {n: first_images(spec, n, scratch) for n in sizes}
        reference_stages = run_child(["stages", str(sets[1000]), str(args.workers)])
        if args.full:
            sizes.append(20000)
            sets[20000] = synth_set(cache, *BIG_SET, args.workers)
        scaling = {}
        for n in sizes:
            scaling[n] = {scope: dedupe(sets[n], scope, str(n)) for scope in ("subject", "all")}
            if n == 1000:
                scaling[n]["subject"]["stages"] = reference_stages["stages"]
            for scope in ("subject", "all"):
                run = scaling[n][scope]
                rows.append((f"scaling: {n} images, scope {scope} (process wall, max RSS)",
                             f"{run['process_wall_s']:.1f} s, {run['max_rss_mb']:.0f} MB",
                             f"{run['wall_s']:.1f} s in-process",
                             f"{n / run['process_wall_s']:.0f} images/s"))

        print("timing the all-pairs pixel-difference reference ...", flush=True)
        reference = reference_all_pairs(spec, REFERENCE_IMAGES,
                                         None if args.full else REFERENCE_SAMPLE_PAIRS)
        print(f"  {reference}", flush=True)
        reference_s = reference["decode_s"] + reference["all_pairs_s"]
        ours_s = scaling[1000]["subject"]["wall_s"]
        how = "measured" if not reference["extrapolated"] else (
            f"extrapolated from {reference['pairs_timed']} pairs")
        rows.append((f"1000 images, decode + find pairs, vs all-pairs pixel difference ({how})",
                     f"{ours_s:.2f} s", f"{reference_s:.0f} s",
                     f"{reference_s / ours_s:.0f}x (target 50x)"))
        ours_cpu = scaling[1000]["subject"]["cpu_s"]
        rows.append(("same, in CPU seconds (ours: both threads, with interpreter start)",
                     f"{ours_cpu:.2f} s", f"{reference['cpu_s']:.0f} s",
                     f"{reference['cpu_s'] / ours_cpu:.0f}x"))
        search_s = scaling[1000]["subject"]["stages"]["near search, scope all"]
        rows.append(("1000 images, pair search alone (scope all) vs the pair loop alone",
                     f"{search_s:.3f} s", f"{reference['all_pairs_s']:.0f} s",
                     f"{reference['all_pairs_s'] / search_s:.0f}x"))

        breakdown = run_child(["stages", str(spec), str(args.workers)])
        print(f"\nwhere the time goes, {n_spec} images (in-process, seconds):")
        for stage, seconds in breakdown["stages"].items():
            print(f"  {stage:32s} {seconds:7.2f}")
        print(f"  signatures {breakdown['signatures_mb']:.0f} MB, packed non-empty masks "
              f"{breakdown['packed_masks_mb']:.0f} MB")
        report(rows)
        print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes on the machine "
              "slow every figure above)")


if __name__ == "__main__":
    main()

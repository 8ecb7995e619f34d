"""Training throughput: loader alone, model step alone, and the whole `train` loop.

- loader: batches sliced from the uint8 cache, moved to the device and augmented (flips,
  rotation, brightness, noise), nothing else;
- model step: forward + backward + optimizer step on random tensors already on the device;
- full loop: `nerveseg train --fold all` (no validation) on a synth dataset, images/s over the
  epochs after the first.
- against the plain loop: `nerveseg train` and the 40-line loop a notebook would hold (smp
  U-Net/ResNet-18 from scratch, Adam 1e-3, batch 16, BCE + Dice, horizontal flips, Dice on the
  validation fold each epoch at the training size, the best weights saved with torch.save when
  they improve), on the same synth data (580x420 frames, a subject-grouped fold 0 validating)
  and settings, each a subprocess timed from process start to exit, run alternately.
  nerveseg runs with its own thread choice (docs/train.md, "Threads") and, to separate the
  loop from the thread choice, with the plain loop's torch thread count fixed by --threads.
The full loop should run at >= 90% of the model-only rate (the loader must not starve the
device), and `nerveseg train` at most as long as the plain loop (ratio <= 1.0). CPU target:
unet/resnet18 at 128x128 on synth runs 2 epochs in under 60 s.

Run: .venv/bin/python benchmarks/bench_train.py [--arch unet] [--encoder resnet18]
     [--size 128x128] [--images 96] [--batch-size 8] [--epochs 3] [--device auto]
     [--only all|loop|plain] [--plain-subjects 10] [--plain-per-subject 38]
     [--plain-epochs 6] [--repeats 2]
(the defaults of the comparison are the issue's: 304 training images of 8 subjects, 6 epochs)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, report  # noqa: E402

# nerveseg is imported inside the functions that use it: the plain loop runs this file as its
# own process and imports what a notebook would (torch, smp, OpenCV, numpy), nothing more.
PLAIN_SETTINGS = ("--arch", "unet", "--encoder", "resnet18", "--batch-size", "16",
                  "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0",
                  "--scheduler", "none", "--warmup-epochs", "0", "--grad-clip", "0",
                  "--loss", "bce+dice", "--hflip", "0.5", "--vflip", "0")


def plain_loop(manifest: Path, fold: int, epochs: int, size: int, out: Path) -> None:
    """The reference: the loop a notebook holds (bench_isbi.py's, reading a manifest)."""
    import cv2
    import numpy as np
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    rows = list(csv.DictReader(manifest.open()))

    def read(path: str, interpolation: int) -> np.ndarray:
        image = cv2.imread(str(manifest.parent / path), cv2.IMREAD_GRAYSCALE)
        return cv2.resize(image, (size, size), interpolation=interpolation)

    x = torch.from_numpy(np.stack([read(r["image"], cv2.INTER_AREA) for r in rows])).float()
    y = torch.from_numpy(np.stack([read(r["mask"], cv2.INTER_NEAREST) for r in rows]) > 127)
    x, y = x.unsqueeze(1) / 255, y.float().unsqueeze(1)
    folds = np.array([int(r["fold"]) for r in rows])
    train_idx = np.flatnonzero((folds >= 0) & (folds != fold))
    val_idx = np.flatnonzero(folds == fold)
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best = -1.0
    for _ in range(epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx)).numpy()]
        for i in range(0, len(perm), 16):
            xb, yb = x[perm[i:i + 16]], y[perm[i:i + 16]]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
            logits = model(xb)
            p, t = torch.sigmoid(logits).flatten(1), yb.flatten(1)
            dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, yb) + dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([torch.sigmoid(model(x[val_idx[i:i + 16]]))
                              for i in range(0, len(val_idx), 16)])[:, 0] > 0.5
        truth = y[val_idx, 0] > 0.5
        inter = (pred & truth).flatten(1).sum(1)
        total = pred.flatten(1).sum(1) + truth.flatten(1).sum(1)
        score = float(torch.where(total == 0, 1.0, 2 * inter / total.clamp(min=1)).mean())
        if score > best:
            best = score
            torch.save(model.state_dict(), out / "best.pt")
    print(f"best dice {best:.4f} threads {torch.get_num_threads()}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds from process start to exit, and what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # each its default
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                          check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout.strip()


def compare_with_plain(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Alternate the plain loop and `nerveseg train` (auto threads, and the plain loop's
    thread count fixed) on one synth set; each figure is the median wall time."""
    import json
    import statistics

    import torch

    from nerveseg_cli.data.split import split, write_split
    from nerveseg_cli.data.synth import synth
    from nerveseg_cli.io.datasets import discover_images

    python, threads = sys.executable, torch.get_num_threads()  # the plain loop's default
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth(root / "data", subjects=args.plain_subjects, per_subject=args.plain_per_subject,
              test=0, size=(580, 420), seed=0)
        write_split(split(root / "data" / "train", folds=5, seed=0, workers=1),
                    root / "manifest.csv")
        n_train = len(discover_images(root / "data" / "train")) - sum(
            1 for r in csv.DictReader((root / "manifest.csv").open()) if r["fold"] == "0")
        side = args.size.split("x")[0]
        common = ["train", str(root / "manifest.csv"), "--fold", "0", "--size", args.size,
                  "--epochs", str(args.plain_epochs), "--device", "cpu", "--json",
                  *PLAIN_SETTINGS]
        commands = {
            "plain loop": [python, __file__, "--plain-loop", str(root / "manifest.csv"), "0",
                           str(args.plain_epochs), side, str(root)],
            "nerveseg train": [python, "-m", "nerveseg_cli", *common, "--overwrite", "--out",
                               str(root / "run")],
            f"nerveseg train --threads {threads}": [
                python, "-m", "nerveseg_cli", *common, "--threads", str(threads),
                "--overwrite", "--out", str(root / "run")]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            order = list(commands) if repeat % 2 == 0 else list(reversed(commands))
            for name in order:
                seconds, printed = _timed(commands[name])
                times[name].append(seconds)
                if name == "plain loop":
                    note = printed.splitlines()[-1]
                else:  # the --json summary; its Dice is at full resolution, the Kaggle metric
                    summary = json.loads(printed[printed.index("{"):])
                    note = f"best val dice {summary['best_val_dice']:.4f} at 580x420"
                print(f"{name}: {seconds:.1f} s ({note})", flush=True)
    plain = statistics.median(times["plain loop"])
    runs = {name: " / ".join(f"{t:.1f}" for t in values) for name, values in times.items()}
    rows = [(f"plain loop, {args.plain_epochs} epochs of {n_train} images at {args.size}, "
             f"process start to exit (runs: {runs['plain loop']} s)", f"{plain:.1f} s", "-",
             "-")]
    for name in list(commands)[1:]:
        median = statistics.median(times[name])
        rows.append((f"{name}, same data and settings (runs: {runs[name]} s)",
                     f"{median:.1f} s", f"{plain:.1f} s", f"{median / plain:.2f}x (<= 1.0)"))
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-loop":  # the reference, as a subprocess
        manifest, fold, epochs, size, out = sys.argv[2:7]
        plain_loop(Path(manifest), int(fold), int(epochs), int(size), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", default="128x128", help="training size WxH")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--only", default="all", choices=["all", "loop", "plain"],
                        help="loop: loader, model step, full loop; plain: the comparison")
    parser.add_argument("--plain-subjects", type=int, default=10,
                        help="synth subjects of the comparison (fold 0 holds 2 of them)")
    parser.add_argument("--plain-per-subject", type=int, default=38)
    parser.add_argument("--plain-epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args()
    rows = loop_figures(args) if args.only in ("all", "loop") else []
    if args.only in ("all", "plain"):
        rows += compare_with_plain(args)
    report(rows)


def loop_figures(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Loader alone, model step alone and the whole loop, in this process."""
    import torch

    from nerveseg_cli.data.synth import synth
    from nerveseg_cli.device import resolve_amp, resolve_device, step_generator
    from nerveseg_cli.io.datasets import discover_images, write_manifest
    from nerveseg_cli.io.images import parse_size
    from nerveseg_cli.models import build_model
    from nerveseg_cli.train.augment import augment_batch
    from nerveseg_cli.train.data import cache_samples, choose_geometry, epoch_batches
    from nerveseg_cli.train.engine import load_batch, train
    from nerveseg_cli.train.options import TrainOptions

    width, height = parse_size(args.size)
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    print(f"{args.arch}/{args.encoder} at {args.size}, batch {args.batch_size}, {device}, "
          f"amp {amp}")

    with tempfile.TemporaryDirectory() as tmp:
        per_subject = 12
        synth(Path(tmp) / "data", subjects=max(1, args.images // per_subject),
              per_subject=per_subject, test=0, size=(width, height), seed=0)
        samples = discover_images(Path(tmp) / "data" / "train")
        manifest = Path(tmp) / "manifest.csv"
        write_manifest(manifest, samples)
        options = TrainOptions(manifest=str(manifest), fold="all", arch=args.arch,
                               encoder=args.encoder, size=args.size, epochs=args.epochs,
                               batch_size=args.batch_size, device=args.device, amp=args.amp,
                               channels_last=args.channels_last, rotate="10:0.5",
                               brightness="0.1:0.5", noise="0.03:0.5")

        # 1. loader alone
        geometry = choose_geometry((width, height), False, 32, [])
        data = cache_samples(samples, geometry, keep_original=False)
        augment = options.augment_config()
        generator = torch.Generator().manual_seed(0)
        batches = epoch_batches(data.positive, args.batch_size, None, generator) * 3
        start = time.perf_counter()
        for step, index in enumerate(batches):  # as the loop does: a generator per step
            batch = load_batch(data, index, device)
            augment_batch(batch.images.float() / 255, batch.masks.float(), augment,
                          step_generator(step, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        loader_rate = sum(len(b) for b in batches) / (time.perf_counter() - start)

        # 2. model step alone on random tensors
        model = build_model(options.model_config()).to(device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(args.batch_size, 1, height, width, device=device)
        y = (torch.rand(args.batch_size, 1, height, width, device=device) > 0.5).float()
        steps = max(3, len(batches) // 3)
        for step in range(steps + 2):  # two warm-up steps
            if step == 2:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                logits, _ = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_rate = steps * args.batch_size / (time.perf_counter() - start)

        # 3. the whole loop
        start = time.perf_counter()
        result = train(options, Path(tmp) / "run")
        total = time.perf_counter() - start
        later = result.history[1:] or result.history
        loop_rate = len(samples) * len(later) / sum(r.seconds for r in later)
    ratio = loop_rate / model_rate
    print(f"loader {loader_rate:.1f} img/s, model step {model_rate:.1f} img/s, full loop "
          f"{loop_rate:.1f} img/s ({100 * ratio:.0f}% of model-only), {args.epochs} epochs of "
          f"{len(samples)} images in {total:.1f} s (set-up included), peak RSS "
          f"{peak_rss_mb():.0f} MB")
    rows = [("loader alone (cache -> device -> augment)", f"{loader_rate:.1f} img/s", "-", "-"),
            ("model step alone", f"{model_rate:.1f} img/s", "-", "-"),
            ("full train loop", f"{loop_rate:.1f} img/s", f"{model_rate:.1f} img/s",
             f"{100 * ratio:.0f}% (>= 90%)"),
            (f"{args.epochs} epochs, {len(samples)} images, set-up included", f"{total:.1f} s",
             "-", "CPU 2 epochs at 128x128: < 60 s"),
            ("peak resident memory", f"{peak_rss_mb():.0f} MB", "-", "-")]
    if device.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB",
                     "-", "-"))
    return rows


if __name__ == "__main__":
    main()

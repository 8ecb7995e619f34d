"""The quality bar: nerveseg's default training against a plain smp loop on ISBI-2012.

Protocol (seed 003): 5-fold cross-validation of the 30 labelled 512x512 images at 256x256, best
epoch per fold, mean Dice over folds. The plain reference is the 40-line loop a user would write:
U-Net/resnet18 from scratch, BCE + per-image Dice, Adam 1e-3, batch 16, horizontal flips, 40
epochs. nerveseg runs `train` with its defaults and `--size 256x256` on the same folds, validates
at full resolution (512x512, the harder measure), and must beat the reference's mean Dice without
being slower per epoch. The reference's Dice is reported both at 256x256 (its own measure) and at
512x512 (predictions upsampled, as nerveseg does).

Run: .venv/bin/python benchmarks/bench_isbi.py [--epochs 40] [--folds 0,1,2,3,4]
     [--method both|reference|nerveseg] [--set KEY=VALUE ...]  (extra nerveseg options)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, report  # noqa: E402

from nerveseg_cli.io.datasets import Sample, write_manifest  # noqa: E402
from nerveseg_cli.train.engine import train  # noqa: E402
from nerveseg_cli.train.options import TrainOptions  # noqa: E402

SIZE = 256


def isbi_dir() -> Path:
    for candidate in (os.environ.get("NERVESEG_ISBI_DATA"),
                      REPO.parent / "shared" / "data" / "isbi2012"):
        if candidate and (Path(candidate) / "train" / "images").is_dir():
            return Path(candidate)
    raise SystemExit("ISBI-2012 data not found: set NERVESEG_ISBI_DATA to the isbi2012 folder")


def folds_of(n: int, k: int = 5, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    folds = np.empty(n, dtype=int)
    for fold, chunk in enumerate(np.array_split(order, k)):
        folds[chunk] = fold
    return folds


def dice_per_image(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    inter = (pred & truth).reshape(len(pred), -1).sum(1)
    total = pred.reshape(len(pred), -1).sum(1) + truth.reshape(len(truth), -1).sum(1)
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def reference_fold(images: np.ndarray, masks: np.ndarray, train_idx: np.ndarray,
                   val_idx: np.ndarray, epochs: int, seed: int) -> tuple[float, float, float]:
    """The plain loop. Returns (best Dice at 256, best Dice at 512, seconds per epoch)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    small = lambda a, interp: np.stack([cv2.resize(x, (SIZE, SIZE), interpolation=interp)  # noqa: E731
                                        for x in a])
    x_all = torch.from_numpy(small(images, cv2.INTER_AREA)).float().unsqueeze(1) / 255
    y_all = torch.from_numpy(small(masks.astype(np.uint8), cv2.INTER_NEAREST)).float() \
        .unsqueeze(1)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best_small = best_full = 0.0
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx)).numpy()]
        for i in range(0, len(perm), 16):
            xb, yb = x_all[perm[i:i + 16]], y_all[perm[i:i + 16]]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
            logits = model(xb)
            p = torch.sigmoid(logits).flatten(1)
            t = yb.flatten(1)
            dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, yb) + dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            prob = torch.sigmoid(model(x_all[val_idx]))
        pred_small = (prob[:, 0] > 0.5).numpy()
        best_small = max(best_small, float(dice_per_image(
            pred_small, y_all[val_idx, 0].numpy() > 0.5).mean()))
        full = F.interpolate(prob, size=masks.shape[1:], mode="bilinear", align_corners=False)
        best_full = max(best_full, float(dice_per_image(
            (full[:, 0] * 255).round().numpy() > 127, masks[val_idx]).mean()))
    return best_small, best_full, (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--method", default="both", choices=["both", "reference", "nerveseg"])
    parser.add_argument("--set", action="append", default=[],
                        help="extra nerveseg option KEY=VALUE (JSON value), e.g. lr=0.003")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: all cores); 1 lets the two methods run side "
                        "by side in two processes under equal conditions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    root = isbi_dir()
    print(f"using ISBI-2012 in {root}")
    names = sorted((root / "train" / "images").glob("*.png"), key=lambda p: int(p.stem))
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in names])
    masks = np.stack([cv2.imread(str(root / "train" / "masks" / p.name),
                                 cv2.IMREAD_GRAYSCALE) > 127 for p in names])
    folds = folds_of(len(names))
    chosen = [int(f) for f in args.folds.split(",")]
    ref_small, ref_full, ref_time = [], [], []
    if args.method in ("both", "reference"):
        for fold in chosen:
            s, f, t = reference_fold(images, masks, np.flatnonzero(folds != fold),
                                     np.flatnonzero(folds == fold), args.epochs, args.seed)
            ref_small.append(s)
            ref_full.append(f)
            ref_time.append(t)
            print(f"reference fold {fold}: Dice@256 {s:.4f}  Dice@512 {f:.4f}  {t:.2f} s/epoch",
                  flush=True)
    ours, our_time = [], []
    if args.method in ("both", "nerveseg"):
        extra = {}
        for item in args.set:
            key, value = item.split("=", 1)
            try:
                extra[key.replace("-", "_")] = json.loads(value)
            except json.JSONDecodeError:
                extra[key.replace("-", "_")] = value
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "manifest.csv"
            samples = [Sample(p.stem, p, root / "train" / "masks" / p.name, p.stem, None)
                       for p in names]
            write_manifest(manifest, samples, extra={"fold": folds.tolist()})
            for fold in chosen:
                options = TrainOptions(manifest=str(manifest), fold=str(fold), size="256x256",
                                       epochs=args.epochs, seed=args.seed, device="cpu",
                                       workers=args.threads or 4)
                options = TrainOptions.from_dict({**options.to_dict(), **extra})
                result = train(options, Path(tmp) / f"run{fold}")
                seconds = float(np.mean([r.seconds for r in result.history]))
                ours.append(result.best_dice)
                our_time.append(seconds)
                print(f"nerveseg fold {fold}: Dice@512 {result.best_dice:.4f} (best epoch "
                      f"{result.best_epoch})  {seconds:.2f} s/epoch", flush=True)
    table = []
    if ref_small:
        table.append(("reference loop, mean Dice@256", f"{100 * np.mean(ref_small):.2f}",
                      "-", f"folds {args.folds}"))
    if ours:
        ref = f"{100 * np.mean(ref_full):.2f}" if ref_full else "-"
        ratio = f"{100 * (np.mean(ours) - np.mean(ref_full)):+.2f} points" if ref_full else "-"
        table.append(("nerveseg defaults, mean Dice@512", f"{100 * np.mean(ours):.2f}", ref,
                      ratio))
        reft = f"{np.mean(ref_time):.2f} s" if ref_time else "-"
        ratio = f"{np.mean(our_time) / np.mean(ref_time):.2f}x" if ref_time else "-"
        table.append(("seconds per epoch", f"{np.mean(our_time):.2f} s", reft, ratio))
    elif ref_full:
        table.append(("reference loop, mean Dice@512", f"{100 * np.mean(ref_full):.2f}", "-",
                      "-"))
        table.append(("reference seconds per epoch", f"{np.mean(ref_time):.2f} s", "-", "-"))
    if options_note := [f"{k}={v}" for k, v in (extra.items() if ours else [])]:
        print("nerveseg options changed from the defaults:", ", ".join(options_note))
    report(table)


if __name__ == "__main__":
    main()

"""Training throughput: loader alone, model step alone, and the whole `train` loop.

- loader: batches sliced from the uint8 cache, moved to the device and augmented (flips,
  rotation, brightness, noise), nothing else;
- model step: forward + backward + optimizer step on random tensors already on the device;
- full loop: `nerveseg train --fold all` (no validation) on a synth dataset, images/s over the
  epochs after the first.
The full loop should run at >= 90% of the model-only rate (the loader must not starve the
device). CPU target: unet/resnet18 at 128x128 on synth runs 2 epochs in under 60 s.

Run: .venv/bin/python benchmarks/bench_train.py [--arch unet] [--encoder resnet18]
     [--size 128x128] [--images 96] [--batch-size 8] [--epochs 3] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from nerveseg_cli.device import resolve_amp, resolve_device  # noqa: E402
from nerveseg_cli.io.datasets import discover_images, write_manifest  # noqa: E402
from nerveseg_cli.io.images import parse_size  # noqa: E402
from nerveseg_cli.models import build_model  # noqa: E402
from nerveseg_cli.synth import synth  # noqa: E402
from nerveseg_cli.train import TrainOptions, train  # noqa: E402
from nerveseg_cli.train.augment import augment_batch  # noqa: E402
from nerveseg_cli.train.data import cache_samples, choose_geometry, epoch_batches  # noqa: E402
from nerveseg_cli.train.engine import _batch_tensors  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
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
    args = parser.parse_args()
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
        for index in batches:
            images, masks = _batch_tensors(data, index, device, device.type == "cuda")
            augment_batch(images.float() / 255, masks.float(), augment, generator)
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
    report(rows)


if __name__ == "__main__":
    main()

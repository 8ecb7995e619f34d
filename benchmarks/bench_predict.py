"""Prediction throughput: the model alone against the whole `predict` command.

A run is trained for one epoch on a synth set (only its weights' shape matters here), then:
- model only: forward passes on random tensors already on the device, at the run's geometry;
- whole command: `predict` over N synth test images at 580x420 (decoding, geometry, TTA
  inversion, mapping back, 8-bit PNG writing, prediction.json), --tta none.
Target on CUDA: whole command >= 80% of model-only. On the CPU the model dominates.

Run: .venv/bin/python benchmarks/bench_predict.py [--images 64] [--batch-size 8]
     [--encoder resnet18] [--device auto] [--tta none]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from nerveseg_cli.data.synth import synth  # noqa: E402
from nerveseg_cli.device import resolve_amp, resolve_device  # noqa: E402
from nerveseg_cli.inference.predict import PredictOptions, predict  # noqa: E402
from nerveseg_cli.io.datasets import discover_images, write_manifest  # noqa: E402
from nerveseg_cli.io.runs import load_run  # noqa: E402
from nerveseg_cli.train.engine import train  # noqa: E402
from nerveseg_cli.train.options import TrainOptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", default="576x448", help="the run's resize geometry")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--tta", default="none")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth(root / "data", subjects=1, per_subject=8, test=args.images, size=(580, 420),
              seed=0)
        samples = discover_images(root / "data" / "train")
        write_manifest(root / "m.csv", samples)
        train(TrainOptions(manifest=str(root / "m.csv"), fold="all", encoder=args.encoder,
                           size=args.size, epochs=1, batch_size=4, device=args.device),
              root / "run")
        config, model = load_run(root / "run")
        model.to(device)
        geometry = config.geometry
        x = torch.randn(args.batch_size, 1, geometry.height, geometry.width, device=device)
        batches = max(2, args.images // args.batch_size)
        with torch.no_grad():
            for step in range(batches + 1):
                if step == 1:  # one warm-up batch
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                with torch.autocast(device.type, dtype=amp) if amp else \
                        contextlib.nullcontext():
                    model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        model_rate = batches * args.batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        result = predict([root / "run"], root / "data" / "test", root / "probs",
                         PredictOptions(tta=args.tta, batch_size=args.batch_size,
                                        device=args.device, amp=args.amp))
        command_s = time.perf_counter() - start
    command_rate = result.written / command_s
    ratio = command_rate / model_rate
    print(f"{device}, {args.encoder} at {args.size}, batch {args.batch_size}, tta {args.tta}: "
          f"model only {model_rate:.1f} img/s, whole command {command_rate:.1f} img/s "
          f"({100 * ratio:.0f}%)")
    report([
        ("predict: model only", f"{model_rate:.1f} img/s", "-", "-"),
        (f"predict: whole command, tta {args.tta}", f"{command_rate:.1f} img/s",
         f"{model_rate:.1f} img/s (model only)", f"{100 * ratio:.0f}% (CUDA target >= 80%)"),
    ])


if __name__ == "__main__":
    main()

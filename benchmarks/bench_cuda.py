"""The CUDA figures, in one run of under 10 minutes: generate a synth set, then measure

1. training: the full `train` loop against the model step alone (bench_train.py; target
   >= 90%), and the epoch time with bf16 autocast, channels-last and torch.compile against
   fp32 (speed-ups);
2. prediction: the whole `predict` command against the model alone (bench_predict.py;
   target >= 80%);
3. latency: `nerveseg bench` per-frame p50/p95/p99 at batch 1 and the best batch throughput,
   torch and ONNX Runtime;
4. several GPUs: `torchrun --nproc_per_node N` (N = the GPUs the machine has; one GPU still
   runs the DistributedDataParallel path with world size 1, NCCL) against one process.

Prints one markdown table (benchmark, figure, reference, ratio / target) naming the GPU, for
docs/performance.md. Without CUDA it refuses, unless --smoke (tiny settings on the CPU, gloo:
a check that every step runs, not figures).

Run: .venv/bin/python benchmarks/bench_cuda.py [--images 512] [--size 256x256] [--epochs 3]
     [--batch-size 32] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report  # noqa: E402

Row = tuple[str, str, str, str]
BIN = Path(sys.executable).parent


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, failing loudly with its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return done


def script_rows(script: str, args: list[str], tag: str) -> list[Row]:
    """The report rows another benchmark script prints, each prefixed with ``tag``."""
    done = run([sys.executable, str(HERE / script), *args])
    rows = []
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "benchmark":
            rows.append((f"{tag}: {cells[0]}", cells[1], cells[2], cells[3]))
    return rows


def make_data(root: Path, images: int, size: str) -> Path:
    """A synth set of ``images`` training frames and a manifest with a fold column."""
    subjects = max(2, images // 64)
    run([str(BIN / "nerveseg"), "synth", str(root / "data"), "--subjects", str(subjects),
         "--per-subject", str(max(1, images // subjects)), "--test", "64", "--size", size])
    run([str(BIN / "nerveseg"), "split", str(root / "data" / "train"), "--folds", "2",
         "--out", str(root / "folds.csv")])
    return root / "folds.csv"


def epoch_seconds(folds: Path, out: Path, args: argparse.Namespace, extra: list[str],
                  launcher: list[str] | None = None) -> float:
    """Median seconds of the epochs after the first (warm-up, compilation) of one run."""
    command = [*(launcher or [str(BIN / "nerveseg")]), "train", str(folds), "--fold", "0",
               "--epochs", str(args.epochs), "--size", args.train_size, "--batch-size",
               str(args.batch_size), "--device", args.device, "--out", str(out), *extra]
    run(command)
    seconds = pd.read_csv(out / "metrics.csv")["seconds"]
    return float(seconds.iloc[1:].median() if len(seconds) > 1 else seconds.iloc[0])


def training_variants(folds: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    base = epoch_seconds(folds, work / "fp32", args, ["--amp", "off"])
    rows = []
    variants = {"bf16 autocast": ["--amp", "bf16"],
                "bf16 + channels-last": ["--amp", "bf16", "--channels-last"],
                "bf16 + torch.compile": ["--amp", "bf16", "--compile"]}
    if args.smoke:  # the CPU: bf16 autocast exists there too; compile would take minutes
        variants.pop("bf16 + torch.compile")
    for name, extra in variants.items():
        seconds = epoch_seconds(folds, work / name.replace(" ", "_"), args, extra)
        rows.append((f"train epoch, {name} ({args.train_size}, batch {args.batch_size})",
                     f"{seconds:.2f} s", f"{base:.2f} s (fp32)",
                     f"{base / seconds:.2f}x speed-up"))
    return rows


def torchrun_rows(folds: Path, work: Path, args: argparse.Namespace, gpus: int) -> list[Row]:
    """DDP with one process per GPU against one process: epoch time of the same run."""
    single = epoch_seconds(folds, work / "single", args, ["--amp", "bf16"])
    launcher = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={gpus}", "-m",
                "nerveseg_cli"]
    ddp = epoch_seconds(folds, work / "ddp", args, ["--amp", "bf16"], launcher)
    return [(f"train under torchrun, {gpus} process(es) (DDP, "
             f"{'gloo' if args.smoke else 'NCCL'})", f"{ddp:.2f} s/epoch",
             f"{single:.2f} s/epoch (one process)", f"{single / ddp:.2f}x "
             f"(ideal {gpus}x)")]


def latency_rows(folds: Path, work: Path, args: argparse.Namespace) -> list[Row]:
    """`nerveseg bench` on a trained run: batch-1 latency and best throughput per engine.

    ONNX Runtime runs on CUDA only with the onnxruntime-gpu package; without it, on the CPU
    (the row names the device, so the figure is not mistaken for a CUDA one)."""
    run_dir = work / "fp32"
    import onnxruntime

    ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    rows = []
    for engine, device in (("torch", args.device),
                           ("onnxruntime", args.device if ort_cuda else "cpu")):
        done = run([str(BIN / "nerveseg"), "bench", str(run_dir), "--engine", engine,
                    "--device", device, "--frames", str(args.frames), "--json"])
        for entry in json.loads(done.stdout)["engines"]:  # docs/bench.md, "--json"
            latency = entry["latency_ms"]
            rows.append((f"latency batch 1, {entry['engine']} on {entry['device']}",
                         f"p50 {latency['p50']:.2f} ms",
                         f"p95 {latency['p95']:.2f} / p99 {latency['p99']:.2f} ms",
                         f"{entry['best_fps']:.0f} fps at batch {entry['best_batch']}"))
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="580x420", help="synth image size")
    parser.add_argument("--train-size", default="256x256")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=200, help="frames timed per latency")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings on the CPU: checks the steps, no figures")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.size, args.train_size = 48, "96x64", "64x64"
        args.epochs, args.batch_size, args.frames = 2, 8, 20
    return args


def main() -> None:
    args = parse_args()
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("no CUDA device: this script measures CUDA figures (run it on a GPU "
                         "machine, or with --smoke to check its steps on the CPU)")
    args.device = "cpu" if args.smoke else "cuda"
    gpus = 1 if args.smoke else torch.cuda.device_count()
    gpu = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folds = make_data(work, args.images, args.size)
        small = ["--images", str(args.images), "--device", args.device]
        rows += script_rows("bench_train.py", [*small, "--size", args.train_size,
                                               "--batch-size", str(args.batch_size),
                                               "--epochs", str(args.epochs)], "train")
        rows += script_rows("bench_predict.py", [*small, "--batch-size",
                                                 str(args.batch_size)], "predict")
        rows += training_variants(folds, work, args)
        if shutil.which("torchrun", path=str(BIN)) or (BIN / "torchrun").exists():
            rows += torchrun_rows(folds, work, args, gpus)
        rows += latency_rows(folds, work, args)
    print(f"\n{gpu}; {gpus} GPU(s); torch {torch.__version__}; "
          f"{time.perf_counter() - started:.0f} s in all")
    report(rows)


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    main()

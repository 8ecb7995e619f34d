"""The CUDA figures in one device call: a sequence of measured steps, each row saved at once.

Steps, in the order run (most valuable first; ``--only`` picks some, ``--list`` names them):
  env            GPU, compute capability, torch, CUDA, what ``--amp auto`` resolves to
  data           a synth set (``nerveseg synth`` + ``split``) that the training steps share
  loop           bench_train.py --only loop: loader, model step and the whole ``train`` loop
                 (target: the loop at >= 90% of the model step's images/s)
  fp32 bf16 fp16 channels-last
                 seconds per training epoch (``--fold all``, median of the epochs after the
                 first), each a ``nerveseg train`` process: bf16 and fp16 (which runs the
                 gradient scaler) against fp32, bf16 + channels-last against bf16
  arch presence  an architecture that is not a U-Net (``--other-arch``, default fpn) and the
                 U-Net with ``--presence-head``, against the bf16 U-Net
  ddp            ``torchrun --nproc_per_node N`` (N = the GPUs; 1 on a one-GPU machine, where
                 torchrun still makes the trainer take the DistributedDataParallel path):
                 world size, backend and whether DDP was built, read by ddp_probe.py
  resume         N epochs straight against a run stopped by SIGTERM once epoch 1's metrics.csv
                 row exists and continued with ``train --resume``: are the last weights equal
                 (``--deterministic`` where CUDA allows it, else the max difference)
  predict        bench_predict.py: the whole ``predict`` command against the model alone
                 (target: >= 80%)
  latency-torch latency-ort
                 ``nerveseg bench``: batch-1 p50/p95/p99 and the best throughput; ONNX Runtime
                 on CUDA where its CUDA provider exists, else a row saying why not and the CPU
  compile        bf16 + torch.compile against bf16, last: its first epoch compiles (about
                 90 s for the smoke's model on the 2-core CPU)

Every row is appended to OUT/rows.jsonl (one JSON object: step, benchmark, figure, reference,
ratio, status, t_s, extras; flushed) and printed as soon as it is measured; OUT/progress.txt
has a line at each step's start and end, OUT/steps.log every command's output. A step that
fails writes a row with the last lines of its stderr and the run goes on. A time budget
(``--budget-s``) bounds the whole run: a step is skipped, with a row saying so, when less time
is left than it needs, and a command still running when the budget ends is killed (a row says
that too). At the end OUT/table.md holds the markdown table.

Every nerveseg command runs as ``python -m nerveseg_cli`` (never the ``nerveseg`` entry
point) and torchrun as ``python -m torch.distributed.run``, with this interpreter: on the
device machine nerveseg is not installed, only on PYTHONPATH (benchmarks/device_cuda.sh).

Run: python3 benchmarks/bench_cuda.py --out DIR [--budget-s 450] [--only STEP,...]
     [--images 1024] [--train-size 256x256] [--epochs 5] [--batch-size 32] [--smoke]
--smoke: tiny settings on the CPU (gloo for DDP): the rehearsal that every step runs, not
figures (benchmarks/rehearse_device.sh).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import REPO, markdown_table  # noqa: E402

NERVESEG = [sys.executable, "-m", "nerveseg_cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TAIL_LINES = 15  # of a failed command's stderr, in its row
LOG_CHARS = 20_000  # of each command's stdout and stderr, in steps.log
ORT_GPU_WHEEL = "onnxruntime-gpu 1.30.0 for cp312 is a 246.7 MB wheel"


class StepFailed(Exception):
    """A step that could not give its figure; ``stderr`` is what the command said, ``status``
    the row's (failed, or timeout where the budget ended it)."""

    def __init__(self, message: str, stderr: str = "", status: str = "failed") -> None:
        super().__init__(message)
        self.stderr, self.status = stderr, status


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def short(command: list[str]) -> str:
    """A command as a line, the interpreter's path shortened to its name."""
    return " ".join(Path(c).name if c == sys.executable else c for c in command)


# --------------------------------------------------------------------------------------------
# where the results go


class Recorder:
    """The results as they are measured (rows.jsonl, progress.txt, steps.log in ``out``, and
    stdout), and the clock of the budget."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget_s = out, budget_s
        self.started = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.step = "-"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def _append(self, name: str, text: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / name, "a", encoding="utf-8") as handle:
            handle.write(text)

    def progress(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        self._append("progress.txt", line + "\n")

    def row(self, benchmark: str, figure: str = "-", reference: str = "-", ratio: str = "-",
            status: str = "ok", **extra: Any) -> None:
        row = {"step": self.step, "benchmark": benchmark, "figure": figure,
               "reference": reference, "ratio": ratio, "status": status,
               "t_s": round(self.elapsed(), 1), **extra}
        self.rows.append(row)
        self._append("rows.jsonl", json.dumps(row) + "\n")
        print("ROW " + json.dumps(row), flush=True)

    def command(self, command: list[str], seconds: float, outcome: str, stdout: str,
                stderr: str) -> None:
        self._append("steps.log", f"\n=== [{self.step}] {short(command)}\n--- {outcome} after "
                                  f"{seconds:.1f} s; stdout:\n{stdout[-LOG_CHARS:]}\n"
                                  f"--- stderr:\n{stderr[-LOG_CHARS:]}\n")

    def write_table(self, title: str) -> None:
        def cell(text: Any) -> str:
            return str(text).replace("|", "/").replace("\n", " ")

        cells = [(cell(f"{r['benchmark']}" + ("" if r["status"] == "ok" else
                                               f" [{r['status']}]")),
                  cell(r["figure"]), cell(r["reference"]), cell(r["ratio"]))
                 for r in self.rows]
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "table.md").write_text(f"{title}\n\n{markdown_table(cells)}",
                                           encoding="utf-8")


# --------------------------------------------------------------------------------------------
# running commands inside the budget


def run_command(rec: Recorder, command: list[str], cap_s: float | None = None,
                env: dict[str, str] | None = None) -> str:
    """Run ``command`` (its own process group) until it ends or the budget (or ``cap_s``)
    does; its stdout, or :class:`StepFailed` with its stderr."""
    limit = rec.left() if cap_s is None else min(cap_s, rec.left())
    if limit < 1:
        raise StepFailed("no time left in the budget")
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        rec.command(command, time.monotonic() - started, "killed (budget)", stdout, stderr)
        raise StepFailed(f"killed after {limit:.0f} s: the budget ran out", stderr,
                         "timeout") from None
    seconds = time.monotonic() - started
    rec.command(command, seconds, f"exit {process.returncode}", stdout, stderr)
    if process.returncode != 0:
        raise StepFailed(f"exit {process.returncode}: {short(command)[:300]}", stderr)
    return stdout


def table_rows(stdout: str) -> list[tuple[str, str, str, str]]:
    """The rows of the markdown table another benchmark script printed (_common.report)."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "benchmark":
            rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


def epoch_figures(run: Path) -> tuple[float, float]:
    """The median seconds of a run's epochs after the first, and the first's."""
    with open(run / "metrics.csv", encoding="utf-8") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    return statistics.median(seconds[1:] or seconds), seconds[0]


def compare_weights(a: Path, b: Path) -> tuple[bool, float]:
    """Whether two safetensors files hold the same tensors, and the largest difference."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys():
        return False, float("inf")
    diffs = [float((x[k].double() - y[k].double()).abs().max()) if x[k].numel() else 0.0
             for k in x]
    return all(torch.equal(x[k], y[k]) for k in x), max(diffs, default=0.0)


# --------------------------------------------------------------------------------------------
# the steps


@dataclass(frozen=True)
class Variant:
    label: str
    options: tuple[str, ...]
    against: str = ""  # the variant it is compared with
    speed_up: bool = True  # the ratio as a speed-up (else as a multiple of the time)


def variants(args: argparse.Namespace) -> dict[str, Variant]:
    fp16 = ("train epoch, fp16 autocast + gradient scaler", ("--amp", "fp16"))
    if args.smoke:  # the CPU refuses fp16; the step still runs its command
        fp16 = ("train epoch, bf16 (smoke: fp16 needs CUDA)", ("--amp", "bf16"))
    return {
        "fp32": Variant("train epoch, fp32", ("--amp", "off")),
        "bf16": Variant("train epoch, bf16 autocast", ("--amp", "bf16"), "fp32"),
        "fp16": Variant(fp16[0], fp16[1], "fp32"),
        "channels-last": Variant("train epoch, bf16 + channels-last",
                                 ("--amp", "bf16", "--channels-last"), "bf16"),
        "arch": Variant(f"train epoch, {args.other_arch} (not a U-Net), bf16",
                        ("--arch", args.other_arch, "--amp", "bf16"), "bf16", False),
        "presence": Variant("train epoch, U-Net + presence head, bf16",
                            ("--amp", "bf16", "--presence-head"), "bf16", False),
        "compile": Variant("train epoch, bf16 + torch.compile (epochs after the first)",
                           ("--amp", "bf16", "--compile"), "bf16"),
    }


class CudaBench:
    """The steps, sharing one work folder, one synth set and the runs they trained."""

    def __init__(self, args: argparse.Namespace, rec: Recorder) -> None:
        self.args, self.rec = args, rec
        self.work: Path = args.work
        self.variants = variants(args)
        self.epochs: dict[str, float] = {}  # variant -> median seconds per epoch
        self.env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}

    def run(self, command: list[str], cap_s: float | None = None,
            env: dict[str, str] | None = None) -> str:
        return run_command(self.rec, command, cap_s, env or self.env)

    def steps(self) -> dict[str, tuple[float, Callable[[], None]]]:
        """Name -> (seconds the step needs at least, the step), in the order run."""
        a = self.args
        train_s = a.needs_train_s
        table: dict[str, tuple[float, Callable[[], None]]] = {
            "env": (0, self.step_env), "data": (train_s, self.step_data),
            "loop": (2 * train_s, self.step_loop)}
        for name in ("fp32", "bf16", "fp16", "channels-last", "arch", "presence"):
            table[name] = (train_s, lambda name=name: self.step_variant(name))
        table.update({"ddp": (1.5 * train_s, self.step_ddp),
                      "resume": (3 * train_s, self.step_resume),
                      "predict": (train_s, self.step_predict),
                      "latency-torch": (train_s / 2, self.step_latency_torch),
                      "latency-ort": (train_s, self.step_latency_ort),
                      "compile": (4 * train_s, lambda: self.step_variant("compile"))})
        return table

    # --- environment and data ---------------------------------------------------------------

    def step_env(self) -> None:
        import torch

        from nerveseg_cli import __version__
        from nerveseg_cli.device import resolve_amp, resolve_device

        device = resolve_device(self.args.device)
        amp = resolve_amp("auto", device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            gpu = (f"{props.name}, compute capability {props.major}.{props.minor}, "
                   f"{props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} GPU(s)")
        else:
            gpu = f"no GPU: {platform.processor() or platform.machine()} (smoke)"
        versions = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
                    f"{torch.backends.cudnn.version()}, Python {platform.python_version()}")
        smp = package_version("segmentation-models-pytorch")
        auto = str(amp).replace("torch.", "") if amp else "off"
        self.rec.row("environment", gpu, versions,
                     f"--amp auto -> {auto}; nerveseg {__version__}, smp {smp}",
                     gpu_count=torch.cuda.device_count())

    def folds(self) -> Path:
        """The synth set's manifest (made now when the data step did not run)."""
        if not (self.work / "folds.csv").is_file():
            self.step_data()
        return self.work / "folds.csv"

    def step_data(self) -> None:
        a, folds = self.args, self.work / "folds.csv"
        stamp, wanted = self.work / "data.json", {"images": a.images, "size": a.size}
        if folds.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            self.rec.row("synth set (reused from an earlier call)", f"{a.images} frames, {a.size}")
            return
        started = time.monotonic()
        subjects = max(2, a.images // 64)
        self.run([*NERVESEG, "synth", str(self.work / "data"), "--subjects", str(subjects),
                  "--per-subject", str(max(1, a.images // subjects)), "--test", "0", "--size",
                  a.size, "--overwrite"])
        self.run([*NERVESEG, "split", str(self.work / "data" / "train"), "--folds", "2",
                  "--out", str(folds), "--overwrite"])
        stamp.write_text(json.dumps(wanted))
        self.rec.row("synth set: synth + split (2 folds)",
                     f"{self.frames()} frames, {a.size}", "-",
                     f"{time.monotonic() - started:.1f} s")

    def frames(self) -> int:
        with open(self.work / "folds.csv", encoding="utf-8") as handle:
            return sum(1 for _ in csv.DictReader(handle))

    # --- training ---------------------------------------------------------------------------

    def train_args(self, out: Path, options: tuple[str, ...] | list[str], fold: str = "all",
                   epochs: int | None = None) -> list[str]:
        a = self.args
        return ["train", str(self.folds()), "--fold", fold, "--epochs", str(epochs or a.epochs),
                "--size", a.train_size, "--batch-size", str(a.batch_size), "--device", a.device,
                "--save-every", "end", "--overwrite", "--out", str(out), *options]

    def step_loop(self) -> None:
        a = self.args
        stdout = self.run([sys.executable, str(HERE / "bench_train.py"), "--only", "loop",
                           "--size", a.train_size, "--images", str(a.images), "--batch-size",
                           str(a.batch_size), "--epochs", str(a.epochs), "--device", a.device,
                           "--amp", "auto"])
        rows = table_rows(stdout)
        if not rows:
            raise StepFailed("bench_train.py printed no table", stdout)
        for benchmark, figure, reference, ratio in rows:
            self.rec.row(f"train ({a.train_size}, batch {a.batch_size}, amp auto): {benchmark}",
                         figure, reference, ratio)

    def variant_run(self, name: str) -> Path:
        """The run of a variant, trained now unless an earlier step of this call did."""
        run = self.work / f"run-{name}"
        if name not in self.epochs:
            self.run([*NERVESEG, *self.train_args(run, self.variants[name].options)])
            self.epochs[name] = epoch_figures(run)[0]
        return run

    def step_variant(self, name: str) -> None:
        a, variant = self.args, self.variants[name]
        self.epochs.pop(name, None)  # measured afresh
        run = self.variant_run(name)
        seconds, first = epoch_figures(run)
        rate = f"{self.frames() / seconds:.0f} img/s"
        label = f"{variant.label} ({a.train_size}, batch {a.batch_size}, {self.frames()} img)"
        against = self.epochs.get(variant.against)
        if against is None:
            reference, ratio = "-", f"({variant.against} not measured)" if variant.against \
                else "-"
        else:
            reference = f"{against:.2f} s ({variant.against} U-Net)"
            ratio = f"{against / seconds:.2f}x speed-up" if variant.speed_up else \
                f"{seconds / against:.2f}x the time"
        self.rec.row(label, f"{seconds:.2f} s/epoch ({rate})", reference, ratio,
                     first_epoch_s=round(first, 2))

    # --- torchrun ---------------------------------------------------------------------------

    def step_ddp(self) -> None:
        gpus = 1 if self.args.smoke else max(1, self.gpu_count())
        probe = self.work / "ddp_probe.jsonl"
        probe.unlink(missing_ok=True)
        env = {**self.env, "DDP_PROBE_OUT": str(probe)}
        run = self.work / "run-ddp"
        self.run([*TORCHRUN, "--standalone", f"--nproc_per_node={gpus}",
                  str(HERE / "ddp_probe.py"), *self.train_args(run, ("--amp", "bf16"))], env=env)
        seconds = epoch_figures(run)[0]
        records = [json.loads(line) for line in probe.read_text().splitlines()] \
            if probe.is_file() else []
        main = next((r for r in records if r.get("rank") in ("0", None)), {})
        built = bool(main.get("ddp"))
        what = (f"DDP built, backend {main.get('backend')}, world size {main.get('world')}"
                if built else "DDP NOT built: the plain loop ran (backend asked: "
                f"{main.get('init_backend')})")
        single = self.epochs.get("bf16")  # the same run in one plain process
        self.rec.row(f"train under torchrun --nproc_per_node {gpus} (env WORLD_SIZE "
                     f"{main.get('env_world_size')}): {what}", f"{seconds:.2f} s/epoch",
                     "(bf16 not measured)" if single is None else
                     f"{single:.2f} s/epoch (one plain process, bf16)",
                     "-" if single is None else f"{single / seconds:.2f}x (ideal {gpus}x)",
                     status="ok" if built else "check", probe=records)

    def gpu_count(self) -> int:
        import torch

        return torch.cuda.device_count()

    # --- resume -----------------------------------------------------------------------------

    def step_resume(self) -> None:
        a = self.args
        env = {**self.env, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        options: list[str] = ["--deterministic"]
        straight, note = self.work / "resume-straight", "--deterministic"
        try:
            self.run([*NERVESEG, *self.train_args(straight, options, "0", a.resume_epochs)],
                     env=env)
        except StepFailed as failure:
            if "determinis" not in failure.stderr.lower():
                raise
            refusal = tail(failure.stderr, 1)
            self.rec.row("resume: --deterministic refused on this device", "-", "-",
                         refusal[:200], status="info", error=tail(failure.stderr))
            options, note = [], f"not deterministic ({refusal[:120]})"
            self.run([*NERVESEG, *self.train_args(straight, options, "0", a.resume_epochs)],
                     env=env)
        resumed = self.work / "resume-run"
        where = self.interrupt_after_epoch_one(
            [*NERVESEG, *self.train_args(resumed, options, "0", a.resume_epochs)], resumed, env)
        if where is not None:
            self.run([*NERVESEG, "train", "--resume", str(resumed)], env=env)
        same, diff = compare_weights(straight / "last.safetensors", resumed / "last.safetensors")
        stopped = f"stopped ({where}), then train --resume" if where else \
            "NOT interrupted: it finished before the SIGTERM took effect"
        self.rec.row(f"resume on {a.device}, {a.resume_epochs} epochs, fold 0, {note}: "
                     f"{stopped}; last.safetensors",
                     "identical" if same else f"max abs diff {diff:.3g}",
                     "the uninterrupted run's", "bitwise equal" if same else "differs",
                     status="check" if where is None else "ok" if same else "differs",
                     max_abs_diff=diff)

    def interrupt_after_epoch_one(self, command: list[str], run: Path,
                                  env: dict[str, str]) -> str | None:
        """Start a training, SIGTERM it once metrics.csv has epoch 1's row, and wait; where its
        interruption message says it stopped, or None when it finished first."""
        logs = self.work / "resume-interrupted.log"
        started = time.monotonic()
        with open(logs, "w", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                       env=env, start_new_session=True)
            signalled = self.signal_after_first_row(process, run / "metrics.csv")
        output = logs.read_text(encoding="utf-8")
        self.rec.command(command, time.monotonic() - started,
                         f"exit {process.returncode}", output, "")
        if process.returncode == 0:  # it ended before the signal, or the signal after it
            return None
        if not signalled or process.returncode != 128 + signal.SIGTERM:
            raise StepFailed(f"the interrupted run ended with exit {process.returncode}",
                             output)
        said = [line for line in output.splitlines() if "SIGTERM" in line]
        return said[-1].split(": the state")[0].strip() if said else "SIGTERM"

    def signal_after_first_row(self, process: subprocess.Popen, metrics: Path) -> bool:
        """Poll for metrics.csv's first epoch row; SIGTERM the process then. Whether it was
        signalled; it has ended on return (killed if the budget ran out)."""
        signalled = False
        while process.poll() is None:
            if self.rec.left() < 1:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise StepFailed("killed: the budget ran out", status="timeout")
            if not signalled and metrics.is_file() and \
                    len(metrics.read_text(encoding="utf-8").splitlines()) >= 2:
                process.send_signal(signal.SIGTERM)
                signalled = True
            time.sleep(0.02)
        return signalled

    # --- prediction and latency -------------------------------------------------------------

    def step_predict(self) -> None:
        a = self.args
        stdout = self.run([sys.executable, str(HERE / "bench_predict.py"), "--images",
                           str(a.predict_images), "--batch-size", str(a.batch_size), "--size",
                           a.predict_size, "--device", a.device])
        rows = table_rows(stdout)
        if not rows:
            raise StepFailed("bench_predict.py printed no table", stdout)
        for benchmark, figure, reference, ratio in rows:
            self.rec.row(f"{benchmark} ({a.predict_size}, batch {a.batch_size})", figure,
                         reference, ratio)

    def bench(self, engine: str, device: str, frames: int) -> None:
        """``nerveseg bench`` of the bf16 run: one row per engine it timed."""
        run = self.variant_run("bf16")
        stdout = self.run([*NERVESEG, "bench", str(run), "--engine", engine, "--device", device,
                           "--frames", str(frames), "--batch-sizes", self.args.batch_sizes,
                           "--json"])
        summary = json.loads(stdout[stdout.index("{"):])
        for entry in summary["engines"]:  # docs/bench.md, "The JSON"
            latency = entry["latency_ms"]
            self.rec.row(f"latency batch 1, {entry['engine']} on {entry['device']} (run at "
                         f"{self.args.train_size}, {summary.get('frame_size')} frames)",
                         f"p50 {latency['p50']:.2f} ms",
                         f"p95 {latency['p95']:.2f} / p99 {latency['p99']:.2f} ms",
                         f"{entry['best_fps']:.0f} fps at batch {entry['best_batch']}",
                         load_s=entry.get("load_seconds"))

    def step_latency_torch(self) -> None:
        self.bench("torch", self.args.device, self.args.frames)

    def step_latency_ort(self) -> None:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        device = self.args.device
        if "CUDAExecutionProvider" not in providers:
            self.rec.row("ONNX Runtime on CUDA", "not available",
                         f"onnxruntime {onnxruntime.__version__}: {', '.join(providers)}",
                         f"the image's onnxruntime is the CPU build; {ORT_GPU_WHEEL}, over the "
                         "64 MiB a device call carries, so it is not carried",
                         status="unavailable")
            device = "cpu"
        self.bench("onnxruntime", device, self.args.frames if device != "cpu"
                   else self.args.cpu_frames)


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------
# the run


def run_steps(bench: CudaBench, only: list[str] | None) -> None:
    """Each step in order: skipped when the budget cannot hold it, a row when it fails."""
    rec = bench.rec
    for name, (needs_s, step) in bench.steps().items():
        if only and name not in only:
            continue
        rec.step = name
        if rec.left() < needs_s:
            rec.row(f"step {name}", "skipped", "-", f"{rec.left():.0f} s left of the budget; "
                    f"it needs about {needs_s:.0f} s", status="skipped")
            rec.progress(f"skip {name}")
            continue
        rec.progress(f"start {name}")
        started = time.monotonic()
        try:
            step()
        except StepFailed as failure:
            said = tail(failure.stderr, 1)[:200]
            rec.row(f"step {name}", "FAILED", "-", f"{said + ' / ' if said else ''}"
                    f"{str(failure)[:200]}", status=failure.status,
                    error=tail(failure.stderr))
        except Exception as error:  # noqa: BLE001  a step's bug must not stop the others
            rec.row(f"step {name}", "FAILED", "-", f"{type(error).__name__}: {error}"[:300],
                    status="failed", error=tail(traceback.format_exc()))
        rec.progress(f"end {name} ({time.monotonic() - started:.1f} s)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-cuda")),
                        help="where rows.jsonl, progress.txt, steps.log, table.md go [$OUT]")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder (kept; a second call reuses its synth set) "
                        "[/tmp/bench-cuda-work]")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for every step together [450; --smoke 1500]")
    parser.add_argument("--only", default="", help="comma-separated steps to run (--list)")
    parser.add_argument("--list", action="store_true", help="name the steps and exit")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", default="580x420", help="synth frame size")
    parser.add_argument("--train-size", default="256x256")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--resume-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--other-arch", default="fpn", help="the architecture not a U-Net")
    parser.add_argument("--predict-images", type=int, default=256)
    parser.add_argument("--predict-size", default="576x448")
    parser.add_argument("--frames", type=int, default=200, help="frames timed per latency")
    parser.add_argument("--cpu-frames", type=int, default=50,
                        help="frames timed for ONNX Runtime when it runs on the CPU")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings on the CPU: checks the steps, no figures")
    args = parser.parse_args()
    args.needs_train_s = 20.0
    if args.smoke:
        args.images, args.size, args.train_size, args.epochs = 24, "96x64", "64x64", 2
        args.resume_epochs, args.batch_size, args.predict_images = 3, 8, 8
        args.predict_size, args.frames, args.cpu_frames = "128x96", 10, 10
        args.batch_sizes, args.needs_train_s = "1,4", 10.0
    args.budget_s = args.budget_s or (1500.0 if args.smoke else 450.0)
    args.work = args.work or Path("/tmp/bench-cuda-work")
    args.device = "cpu" if args.smoke else "cuda"
    return args


def main() -> None:
    args = parse_args()
    rec = Recorder(args.out.resolve(), args.budget_s)
    bench = CudaBench(args, rec)
    if args.list:
        print(" ".join(bench.steps()))
        return
    unknown = set(filter(None, args.only.split(","))) - set(bench.steps())
    if unknown:
        raise SystemExit(f"--only: unknown steps {sorted(unknown)}; --list names them")
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        rec.row("environment", "no CUDA device", f"torch {torch.__version__}", "-",
                status="failed")
        raise SystemExit("no CUDA device: run on a GPU machine, or with --smoke on the CPU")
    rec.progress(f"bench_cuda: budget {args.budget_s:.0f} s, out {rec.out}, work {args.work}")
    run_steps(bench, list(filter(None, args.only.split(","))))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke \
        else "CPU (smoke: checks the steps, no figures)"
    failed = sum(r["status"] in ("failed", "timeout", "skipped") for r in rec.rows)
    rec.write_table(f"{gpu}; torch {torch.__version__}; {rec.elapsed():.0f} s in all; "
                    f"{len(rec.rows)} rows, {failed} failed, timed out or skipped")
    rec.progress(f"done: {len(rec.rows)} rows, {failed} failed, timed out or skipped; "
                 f"{rec.out}/table.md")


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    main()

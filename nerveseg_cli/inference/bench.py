"""``nerveseg bench``: how fast a model predicts, as a live stream sees it and in bulk.

For each engine (torch, ONNX Runtime or both) on one device:

- **latency** at batch 1: each frame, already decoded in memory (a frame grabber's), through
  the whole per-frame path of ``predict``: geometry, normalisation, the model under every TTA
  variant, probabilities mapped back to the frame's size and merged, the 8-bit map and its
  mask (threshold, min area). p50, p95 and p99 over ``frames`` frames, after a few untimed
  warm-up frames;
- **throughput** at each batch size: frames per second over at least ``frames`` frames, and
  the best batch size.

No file is written and none is decoded in the timed part. The frames are an image set's
(IMAGES), or synthetic when none is given. The machine's cores, its load average at the start
and each engine's thread count are reported with the figures: on a shared CPU they say how far
to trust them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.inference.engines import ENGINES, Engine, read_model_info
from nerveseg_cli.inference.exported import is_exported
from nerveseg_cli.inference.ort import ort_threads
from nerveseg_cli.io.datasets import Sample
from nerveseg_cli.lists import parse_list

CHOICES = (*ENGINES, "both")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
WARMUP_FRAMES = 3
SYNTHETIC_SIZE = (580, 420)  # a Kaggle ultrasound frame
MAX_FRAMES = 100_000


@dataclass(frozen=True)
class BenchOptions:
    engine: str = "both"
    device: str = "auto"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    frames: int = 100
    size: tuple[int, int] | None = None  # synthetic frames (width, height)
    tta: str = "none"

    def validate(self) -> BenchOptions:
        if self.engine not in CHOICES:
            raise NervesegError(f"--engine {self.engine!r}: use {', '.join(CHOICES)}")
        if not self.batch_sizes or any(b < 1 or b > 4096 for b in self.batch_sizes):
            raise NervesegError(f"--batch-sizes {','.join(map(str, self.batch_sizes))}: "
                                "whole numbers from 1 to 4096")
        if not 1 <= self.frames <= MAX_FRAMES:
            raise NervesegError(f"--frames {self.frames}: from 1 to {MAX_FRAMES}")
        return self


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``1,2,4,8`` -> (1, 2, 4, 8), in the order given; a size given twice is an error (each
    is timed once)."""
    return tuple(parse_list(text, "--batch-sizes", int, what="a whole number",
                            usage="whole numbers separated by commas, each once, e.g. "
                                  "1,2,4,8"))


@dataclass
class EngineFigures:
    engine: str
    device: str  # where it ran: cpu, cuda:0, CPUExecutionProvider ...
    threads: int | None  # intra-op CPU threads
    load_seconds: float  # loading the model (an on-the-fly export included)
    latency_ms: dict[str, float]  # p50, p95, p99, mean, max at batch 1
    throughput: dict[int, float]  # batch size -> frames per second
    best_batch: int
    best_fps: float

    @property
    def fps_batch1(self) -> float:
        return 1000 / self.latency_ms["mean"]


@dataclass
class BenchResult:
    model: str
    arch: str | None
    geometry: dict[str, Any]
    frames_from: str  # the image set, or "synthetic WxH"
    frame_size: str  # WxH, or "mixed"
    frames: int
    tta: str
    cores: int
    load_average: float | None
    engines: list[EngineFigures] = field(default_factory=list)

    def ratios(self) -> dict[str, float] | None:
        """ONNX Runtime over torch: best throughput, and p50 latency (below 1: faster)."""
        by_name = {e.engine: e for e in self.engines}
        if set(by_name) != set(ENGINES):
            return None
        ort, torch = by_name["onnxruntime"], by_name["torch"]
        return {"throughput": ort.best_fps / torch.best_fps,
                "latency_p50": ort.latency_ms["p50"] / torch.latency_ms["p50"]}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for figures, engine in zip(data["engines"], self.engines, strict=True):
            figures["throughput"] = {str(k): v for k, v in engine.throughput.items()}
            figures["fps_batch1"] = engine.fps_batch1
        data["ratios"] = self.ratios()
        return data


def bench(model: str | Path, images: str | Path | None = None,
          options: BenchOptions = BenchOptions()) -> BenchResult:
    """Latency and throughput of a run folder or an exported model (module docstring)."""
    options.validate()
    from nerveseg_cli.inference.predict import TTA_VARIANTS

    if options.tta not in TTA_VARIANTS:
        raise NervesegError(f"--tta {options.tta!r}: use {', '.join(TTA_VARIANTS)}")
    info = read_model_info(model)
    engines = list(ENGINES) if options.engine == "both" else [options.engine]
    if "torch" in engines and is_exported(model):
        raise NervesegError(f"{model}: an exported model runs with --engine onnxruntime only; "
                            "give the run folder to bench torch too")
    frames, source = _frames(images, info.geometry, options)
    sizes = {f"{f.shape[1]}x{f.shape[0]}" for f in frames}
    result = BenchResult(str(model), _arch(model), info.geometry.to_dict(), source,
                         sizes.pop() if len(sizes) == 1 else "mixed", options.frames,
                         options.tta, _cores(), _load_average())
    for name in engines:
        result.engines.append(_bench_engine(model, name, frames, options))
    return result


def _arch(model: str | Path) -> str | None:
    from nerveseg_cli.inference.exported import is_exported, read_sidecar

    if is_exported(model):
        return read_sidecar(model).model.get("arch")
    from nerveseg_cli.io.runs import read_config

    return read_config(model).model.arch


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _frames(images: str | Path | None, geometry: Any, options: BenchOptions
            ) -> tuple[list[np.ndarray], str]:
    """Up to ``frames`` decoded frames of an image set, or a few synthetic ones."""
    if images is not None:
        from nerveseg_cli.io.datasets import discover_images, load_image

        samples = discover_images(images, videos=True)[:options.frames]
        if not samples:
            raise NervesegError(f"{images}: no images")
        from nerveseg_cli.io.video import close_videos

        try:
            return [load_image(s) for s in samples], str(images)
        finally:
            close_videos()  # a video's decoder: the frames are in memory now
    width, height = options.size or _synthetic_size(geometry)
    if geometry.mode == "pad" and (width > geometry.width or height > geometry.height):
        raise NervesegError(f"--size {width}x{height} does not fit the {geometry.width}x"
                            f"{geometry.height} padding canvas of this model")
    import cv2

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(min(8, options.frames)):  # speckled smooth tissue, as ultrasound looks
        field_ = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32),
                                  (0, 0), sigmaX=max(1.0, min(width, height) / 40))
        field_ = 0.5 + 0.15 * field_ / (field_.std() + 1e-6)
        speckle = rng.gamma(4.0, 0.25, (height, width)).astype(np.float32)
        frames.append(np.clip(255 * field_ * speckle, 0, 255).astype(np.uint8))
    return frames, f"synthetic {width}x{height}"


def _synthetic_size(geometry: Any) -> tuple[int, int]:
    if geometry.mode == "pad":
        return min(SYNTHETIC_SIZE[0], geometry.width), min(SYNTHETIC_SIZE[1], geometry.height)
    return SYNTHETIC_SIZE


def _bench_engine(model: str | Path, name: str, frames: Sequence[np.ndarray],
                  options: BenchOptions) -> EngineFigures:
    from nerveseg_cli.inference.predict import PredictOptions, Predictor

    started = time.perf_counter()
    predictor = Predictor([model], PredictOptions(engine=name, device=options.device,
                                                  tta=options.tta, workers=1))
    load_seconds = time.perf_counter() - started
    engine = predictor.runs[0]
    step = _Step(predictor)
    for i in range(WARMUP_FRAMES):
        step([frames[i % len(frames)]])
    latencies = []
    for i in range(options.frames):
        frame = frames[i % len(frames)]
        start = time.perf_counter()
        step([frame])
        latencies.append(time.perf_counter() - start)
    milliseconds = 1000 * np.asarray(latencies)
    p50, p95, p99 = np.percentile(milliseconds, [50, 95, 99])
    throughput = {}
    for size in options.batch_sizes:
        batches = max(1, math.ceil(options.frames / size))
        batch_frames = [[frames[(b * size + i) % len(frames)] for i in range(size)]
                        for b in range(batches + 1)]
        step(batch_frames[0])  # warm-up at this size (allocations, kernel choice)
        start = time.perf_counter()
        for batch in batch_frames[1:]:
            step(batch)
        throughput[size] = batches * size / (time.perf_counter() - start)
    best = max(throughput, key=throughput.__getitem__)
    return EngineFigures(name, engine.where, _threads(engine), round(load_seconds, 3),
                         {"p50": float(p50), "p95": float(p95), "p99": float(p99),
                          "mean": float(milliseconds.mean()), "max": float(milliseconds.max())},
                         throughput, best, throughput[best])


def _threads(engine: Engine) -> int | None:
    if engine.name == "onnxruntime":
        return ort_threads() if "CPU" in engine.where else None
    if engine.where != "cpu":
        return None
    import torch

    return torch.get_num_threads()


class _Step:
    """One batch of frames through predict's per-frame path, up to the masks."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.post = predictor.settings.post
        self.samples = [Sample(f"frame_{i:06d}", None, None, "bench") for i in range(4096)]

    def __call__(self, batch: Sequence[np.ndarray]) -> None:
        from nerveseg_cli.evaluation.postprocess import label_map
        from nerveseg_cli.io.probmaps import probability_to_values

        results = self.predictor.predict_batch([0], self.samples[:len(batch)], batch)
        for prob, _ in results:
            values = probability_to_values(np.clip(prob, 0.0, 1.0))
            if values.ndim == 2:
                self.post.apply(values)
            else:
                label_map(values, [self.post] * values.shape[0])

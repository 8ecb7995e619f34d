"""``nerveseg synth``: a tiny deterministic dataset in the Kaggle layout.

Each subject has its own tissue (a smooth field with oblique layers) and one nerve site. Frames
of a subject drift a few pixels from one to the next and carry fresh multiplicative speckle, so
consecutive frames look alike without being copies. The nerve (a dark ellipse with a bright rim,
the "honeycomb" look of a brachial plexus) is present in runs of frames, about half of them.
Each subject with at least six frames also gets two planted label conflicts: an exact copy and
a near copy (faint noise added) of earlier frames, with the opposite mask. They are listed in
``planted_duplicates.csv`` so the audit commands can be checked against them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, write_image
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.kaggle_csv import format_rle_csv
from nerveseg_cli.rle import rle_encode

DRIFT_MARGIN = 0.06  # fraction of the size that frames may drift
MIN_SIDE = 8
MAX_SIDE = 4096
MAX_TOTAL_PIXELS = 2 * 10**9


@dataclass(frozen=True)
class SynthResult:
    out: Path
    train_images: int
    positives: int
    test_images: int
    planted: list[tuple[str, str, str]]  # (id_a, id_b, kind)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    field = rng.standard_normal(shape).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigmaX=max(scale, 0.5))
    return field / (field.std() + 1e-6)


class _Subject:
    """One subject's tissue and nerve site, rendered frame by frame."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int]) -> None:
        width, height = size
        self.size = size
        self.margin = (max(1, int(DRIFT_MARGIN * width)), max(1, int(DRIFT_MARGIN * height)))
        canvas = (height + 2 * self.margin[1], width + 2 * self.margin[0])
        ys, xs = np.mgrid[0 : canvas[0], 0 : canvas[1]].astype(np.float32)
        tissue = 0.45 + 0.12 * _smooth_field(rng, canvas, min(canvas) / 8)
        for _ in range(3):  # oblique echogenic layers, as in neck ultrasound
            y0 = rng.uniform(0.1, 0.9) * canvas[0]
            slope = rng.uniform(-0.25, 0.25)
            thickness = rng.uniform(0.01, 0.04) * canvas[0] + 1
            tissue += rng.uniform(0.2, 0.5) * np.exp(-(((ys - y0 - slope * xs) / thickness) ** 2))
        self.tissue = np.clip(tissue, 0.05, None)
        self.centre = (rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height)
        self.axes = (rng.uniform(0.06, 0.09) * width, rng.uniform(0.05, 0.08) * height)
        self.angle = rng.uniform(-30, 30)

    def nerve_mask(self, shift: tuple[int, int]) -> np.ndarray:
        width, height = self.size
        mask = np.zeros((height, width), dtype=np.uint8)
        centre = (self.centre[0] - shift[0], self.centre[1] - shift[1])
        axes = (max(1.0, self.axes[0]), max(1.0, self.axes[1]))
        cv2.ellipse(mask, (centre, (2 * axes[0], 2 * axes[1]), self.angle), 1, thickness=-1)
        return mask.astype(bool)

    def render(self, rng: np.random.Generator, shift: tuple[int, int],
               nerve: bool) -> tuple[np.ndarray, np.ndarray]:
        width, height = self.size
        mx, my = self.margin
        x0, y0 = mx + shift[0], my + shift[1]
        frame = self.tissue[y0 : y0 + height, x0 : x0 + width].copy()
        mask = self.nerve_mask(shift)
        if nerve:
            rim = mask & ~cv2.erode(mask.astype(np.uint8),
                                    np.ones((3, 3), np.uint8),
                                    iterations=max(1, int(min(self.axes) / 6))).astype(bool)
            frame[mask] *= 0.45
            frame[rim] *= 3.2
        else:
            mask[:] = False
        looks = 3.0  # speckle: gamma-distributed with unit mean
        frame *= rng.gamma(looks, 1 / looks, frame.shape).astype(np.float32)
        frame = cv2.GaussianBlur(frame, (3, 3), 0)
        return np.clip(frame * 150, 0, 255).astype(np.uint8), mask


def _subject_frames(seed: np.random.SeedSequence, size: tuple[int, int],
                    count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    subject = _Subject(rng, size)
    mx, my = subject.margin
    shift = np.array([0.0, 0.0])
    present = bool(rng.random() < 0.5)
    frames = []
    for _ in range(count):
        shift = np.clip(shift + rng.normal(0, 0.6, 2), [-mx, -my], [mx, my])
        frames.append(subject.render(rng, (int(round(shift[0])), int(round(shift[1]))),
                                     present))
        if rng.random() < 0.2:  # nerve visibility comes in runs of frames
            present = not present
    return frames


def _opposite_mask(frames: list[tuple[np.ndarray, np.ndarray]], index: int) -> np.ndarray:
    """A plausible mask with the opposite presence of frame ``index``'s mask."""
    if frames[index][1].any():
        return np.zeros_like(frames[index][1])
    donor = next((m for _, m in frames if m.any()), None)
    if donor is not None:
        return donor.copy()
    height, width = frames[index][1].shape
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.ellipse(mask, ((width / 2, height / 2), (width / 6, height / 7), 0), 1, -1)
    return mask.astype(bool)


# A planted conflict: (source frame index, destination frame index, "exact" or "near", the
# seed of a near copy's noise).
Plan = tuple[int, int, str, float]


def synth(out: str | Path, *, subjects: int = 6, per_subject: int = 20, test: int = 24,
          size: tuple[int, int] = (580, 420), seed: int = 0, overwrite: bool = False,
          workers: int = 4, progress: Callable[[int], None] | None = None) -> SynthResult:
    """Write ``train/``, ``test/``, ``train_masks.csv``, ``sample_submission.csv`` and
    ``planted_duplicates.csv`` into ``out``; the same arguments give the same bytes.

    (Nine keyword options, one per ``nerveseg synth`` flag, as every command's function.)"""
    if subjects < 1 or per_subject < 1 or test < 0:
        raise NervesegError("synth needs --subjects >= 1, --per-subject >= 1 and --test >= 0")
    check_synth_size(size, subjects * per_subject + test)
    with Outputs() as outputs:
        folder = outputs.folder(out, overwrite=overwrite)
        (folder / "train").mkdir(exist_ok=True)
        (folder / "test").mkdir(exist_ok=True)
        result = _write_set(folder, subjects, per_subject, test, size, seed, workers, progress)
    return replace(result, out=Path(out))


def check_synth_size(size: tuple[int, int], images: int) -> None:
    """synth renders every frame on a float canvas in memory: refuse what cannot be meant."""
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE:
        raise NervesegError(f"--size {width}x{height}: synth draws at most {MAX_SIDE} pixels a "
                            f"side (Kaggle's frames are 580x420; a larger canvas takes "
                            "minutes and gigabytes per subject)")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise NervesegError(f"--size {width}x{height}: synth needs at least {MIN_SIDE} pixels "
                            "a side to draw a nerve")
    if images * width * height > MAX_TOTAL_PIXELS:
        raise NervesegError(f"{images} images of {width}x{height} are {images * width * height:,}"
                            f" pixels; synth writes at most {MAX_TOTAL_PIXELS:,} (about 2 GB of "
                            "files): fewer images or a smaller --size")


def _write_set(out: Path, subjects: int, per_subject: int, test: int, size: tuple[int, int],
               seed: int, workers: int, progress: Callable[[int], None] | None) -> SynthResult:
    train_seeds, test_seed, plant_seed = np.random.SeedSequence(seed).spawn(3)
    # Plan the planted conflicts first so that rendering can run in threads deterministically.
    subject_seeds = list(enumerate(train_seeds.spawn(subjects), start=1))
    plans = _plan_conflicts(subjects, per_subject, np.random.default_rng(plant_seed))
    encoded: dict[str, str] = {}
    positives = 0

    def make_subject(args: tuple[int, np.random.SeedSequence]) -> tuple[dict[str, str], int]:
        number, subject_seed = args
        return _write_subject(out / "train", number, subject_seed, size, per_subject,
                              plans.get(number, []), progress)

    for rows, count in thread_map(make_subject, subject_seeds, workers):
        encoded.update(rows)
        positives += count
    planted = [(f"{number}_{src + 1}", f"{number}_{dst + 1}", kind)
               for number, plan in plans.items() for src, dst, kind, _ in plan]
    if test:
        _write_test(out / "test", test_seed, size, per_subject, test, workers, progress)
    atomic_write_text(out / "train_masks.csv", format_rle_csv(encoded, "train"))
    atomic_write_text(out / "sample_submission.csv",
                      "img,pixels\n" + "".join(f"{i},1 1\n" for i in range(1, test + 1)))
    atomic_write_text(out / "planted_duplicates.csv", "id_a,id_b,kind\n" + "".join(
        f"{a},{b},{k}\n" for a, b, k in planted))
    return SynthResult(out, len(encoded), positives, test, planted)


def _plan_conflicts(subjects: int, per_subject: int,
                    rng: np.random.Generator) -> dict[int, list[Plan]]:
    """Per subject with six frames or more: an exact and a near copy of two earlier frames,
    written as its last two frames with the opposite mask."""
    plans: dict[int, list[Plan]] = {}
    if per_subject < 6:
        return plans
    for number in range(1, subjects + 1):
        exact_src, near_src = rng.choice(per_subject - 2, size=2, replace=False)
        plans[number] = [(int(exact_src), per_subject - 2, "exact", 0.0),
                         (int(near_src), per_subject - 1, "near", float(rng.integers(0, 2**31)))]
    return plans


def _write_subject(folder: Path, number: int, seed: np.random.SeedSequence,
                   size: tuple[int, int], count: int, plans: list[Plan],
                   progress: Callable[[int], None] | None) -> tuple[dict[str, str], int]:
    """Render and write one subject's frames and masks; (id -> RLE, frames with a nerve)."""
    frames = _subject_frames(seed, size, count)
    for src, dst, kind, noise_seed in plans:
        image = frames[src][0]
        if kind == "near":
            rng = np.random.default_rng(int(noise_seed))
            image = np.clip(image.astype(np.int16) + rng.integers(-2, 3, image.shape),
                            0, 255).astype(np.uint8)
        frames[dst] = (image.copy(), _opposite_mask(frames, src))
    rows = {}
    for index, (image, mask) in enumerate(frames, start=1):
        sample_id = f"{number}_{index}"
        write_image(folder / f"{sample_id}.tif", image)
        write_image(folder / f"{sample_id}_mask.tif", mask.astype(np.uint8) * 255)
        rows[sample_id] = rle_encode(mask)
        if progress:
            progress(1)
    return rows, sum(1 for _, m in frames if m.any())


def _write_test(folder: Path, seed: np.random.SeedSequence, size: tuple[int, int],
                per_subject: int, test: int, workers: int,
                progress: Callable[[int], None] | None) -> None:
    """``test`` frames drawn from fresh subjects, shuffled, numbered 1..test."""
    frames: list[np.ndarray] = []
    for subject_seed in seed.spawn(max(1, -(-test // per_subject))):
        frames.extend(image for image, _ in _subject_frames(subject_seed, size, per_subject))
    order = np.random.default_rng(seed.spawn(1)[0]).permutation(len(frames))
    frames = [frames[i] for i in order[:test]]

    def write(item: tuple[int, np.ndarray]) -> None:
        write_image(folder / f"{item[0]}.tif", item[1])
        if progress:
            progress(1)

    list(thread_map(write, list(enumerate(frames, start=1)), workers))

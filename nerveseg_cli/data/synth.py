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

from nerveseg_cli.classes import Classes
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.kaggle_csv import LONG, format_multiclass_csv, format_rle_csv
from nerveseg_cli.io.outputs import Outputs, atomic_write_text, write_image, write_label_map
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.rle import rle_encode

DRIFT_MARGIN = 0.06  # fraction of the size that frames may drift
NERVE, VESSEL = 1, 2  # the classes of a --classes 3 set
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

    def add_vessel(self, rng: np.random.Generator) -> None:
        """A round vessel beside the nerve: its wall 0.85 to 1.5 times the two radii from the
        nerve's centre, so now and then the two touch."""
        width, height = self.size
        nerve_radius = min(self.axes)
        self.vessel_radius = rng.uniform(0.5, 0.8) * nerve_radius
        distance = rng.uniform(0.85, 1.5) * (max(self.axes) + self.vessel_radius)
        angle = rng.uniform(0, 2 * np.pi)
        self.vessel_centre = (float(np.clip(self.centre[0] + distance * np.cos(angle),
                                            0, width - 1)),
                              float(np.clip(self.centre[1] + distance * np.sin(angle),
                                            0, height - 1)))

    def vessel_mask(self, shift: tuple[int, int]) -> np.ndarray:
        width, height = self.size
        mask = np.zeros((height, width), dtype=np.uint8)
        centre = (int(round(self.vessel_centre[0] - shift[0])),
                  int(round(self.vessel_centre[1] - shift[1])))
        cv2.circle(mask, centre, max(1, int(round(self.vessel_radius))), 1, thickness=-1)
        return mask.astype(bool)

    def nerve_mask(self, shift: tuple[int, int]) -> np.ndarray:
        width, height = self.size
        mask = np.zeros((height, width), dtype=np.uint8)
        centre = (self.centre[0] - shift[0], self.centre[1] - shift[1])
        axes = (max(1.0, self.axes[0]), max(1.0, self.axes[1]))
        cv2.ellipse(mask, (centre, (2 * axes[0], 2 * axes[1]), self.angle), 1, thickness=-1)
        return mask.astype(bool)

    def render(self, rng: np.random.Generator, shift: tuple[int, int], nerve: bool,
               vessel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(frame, mask): a bool nerve mask, or (with a vessel drawn) a label map 0/1/2."""
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
        if vessel:  # an anechoic lumen in a bright wall, drawn over the nerve where they meet
            lumen = self.vessel_mask(shift)
            wall = cv2.dilate(lumen.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            frame[wall & ~lumen] *= 2.0
            frame[lumen] *= 0.12
            mask = np.where(lumen, 2, mask.astype(np.uint8))
        looks = 3.0  # speckle: gamma-distributed with unit mean
        frame *= rng.gamma(looks, 1 / looks, frame.shape).astype(np.float32)
        frame = cv2.GaussianBlur(frame, (3, 3), 0)
        return np.clip(frame * 150, 0, 255).astype(np.uint8), mask


def _subject_frames(seed: np.random.SeedSequence, size: tuple[int, int], count: int,
                    vessels: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """A subject's frames and masks (label maps with ``vessels``, which draw from their own
    random stream, so the nerve frames are those of a binary set)."""
    rng = np.random.default_rng(seed)
    vessel_rng = np.random.default_rng(seed.spawn(1)[0]) if vessels else None
    subject = _Subject(rng, size)
    if vessel_rng is not None:
        subject.add_vessel(vessel_rng)
    mx, my = subject.margin
    shift = np.array([0.0, 0.0])
    present = bool(rng.random() < 0.5)
    vessel = vessel_rng is not None and bool(vessel_rng.random() < 0.7)
    frames = []
    for _ in range(count):
        shift = np.clip(shift + rng.normal(0, 0.6, 2), [-mx, -my], [mx, my])
        frames.append(subject.render(rng, (int(round(shift[0])), int(round(shift[1]))),
                                     present, vessel))
        if rng.random() < 0.2:  # nerve visibility comes in runs of frames
            present = not present
        if vessel_rng is not None and vessel_rng.random() < 0.1:  # so does the vessel's
            vessel = not vessel
    return frames


def _opposite_mask(frames: list[tuple[np.ndarray, np.ndarray]], index: int) -> np.ndarray:
    """A plausible mask with the opposite presence of frame ``index``'s nerve (a label map
    keeps its vessel)."""
    mask = frames[index][1]
    if mask.dtype != bool:
        nerve = _opposite_mask([(f, m == NERVE) for f, m in frames], index)
        return np.where(mask == VESSEL, VESSEL, np.where(nerve, NERVE, 0)).astype(np.uint8)
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
          size: tuple[int, int] = (580, 420), seed: int = 0, classes: Classes | None = None,
          overwrite: bool = False, workers: int = 4,
          progress: Callable[[int], None] | None = None) -> SynthResult:
    """Write ``train/``, ``test/``, ``train_masks.csv``, ``sample_submission.csv`` and
    ``planted_duplicates.csv`` into ``out``; the same arguments give the same bytes. With
    three ``classes`` (background, nerve, vessel) the masks are label maps with a vessel.

    (Keyword options, one per ``nerveseg synth`` flag, as every command's function.)"""
    if subjects < 1 or per_subject < 1 or test < 0:
        raise NervesegError("synth needs --subjects >= 1, --per-subject >= 1 and --test >= 0")
    if classes is not None and classes.count not in (2, 3):
        raise NervesegError(f"--classes {','.join(classes.names)}: synth draws 2 classes "
                            "(background, nerve) or 3 (background, nerve, vessel)")
    check_synth_size(size, subjects * per_subject + test)
    spec = _SetSpec(subjects, per_subject, test, size, seed,
                    classes if classes is not None and not classes.binary else None)
    with Outputs() as outputs:
        folder = outputs.folder(out, overwrite=overwrite)
        (folder / "train").mkdir(exist_ok=True)
        (folder / "test").mkdir(exist_ok=True)
        result = _write_set(folder, spec, workers, progress)
    return replace(result, out=Path(out))


@dataclass(frozen=True)
class _SetSpec:
    subjects: int
    per_subject: int
    test: int
    size: tuple[int, int]
    seed: int
    classes: Classes | None  # three classes: label maps with a vessel; None: binary

    @property
    def vessels(self) -> bool:
        return self.classes is not None


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


def _write_set(out: Path, spec: _SetSpec, workers: int,
               progress: Callable[[int], None] | None) -> SynthResult:
    train_seeds, test_seed, plant_seed = np.random.SeedSequence(spec.seed).spawn(3)
    # Plan the planted conflicts first so that rendering can run in threads deterministically.
    subject_seeds = list(enumerate(train_seeds.spawn(spec.subjects), start=1))
    plans = _plan_conflicts(spec.subjects, spec.per_subject,
                            np.random.default_rng(plant_seed))
    masks: dict[str, np.ndarray] = {}

    def make_subject(args: tuple[int, np.random.SeedSequence]) -> dict[str, np.ndarray]:
        number, subject_seed = args
        return _write_subject(out / "train", number, subject_seed, spec,
                              plans.get(number, []), progress)

    for subject_masks in thread_map(make_subject, subject_seeds, workers):
        masks.update(subject_masks)
    planted = [(f"{number}_{src + 1}", f"{number}_{dst + 1}", kind)
               for number, plan in plans.items() for src, dst, kind, _ in plan]
    if spec.test:
        _write_test(out / "test", test_seed, spec, workers, progress)
    _write_tables(out, spec, masks, planted)
    return SynthResult(out, len(masks), sum(1 for m in masks.values() if np.any(m == 1)),
                       spec.test, planted)


def _write_tables(out: Path, spec: _SetSpec, masks: dict[str, np.ndarray],
                  planted: list[tuple[str, str, str]]) -> None:
    """train_masks.csv (Kaggle's train form, or the long form by class), the sample
    submission (every test image, and class), planted_duplicates.csv."""
    test_ids = [str(i) for i in range(1, spec.test + 1)]
    if spec.classes is None:
        train = format_rle_csv({i: rle_encode(m) for i, m in masks.items()}, "train")
        sample = format_rle_csv(dict.fromkeys(test_ids, "1 1"), "submission")
    else:
        classes = spec.classes
        train = format_multiclass_csv({(i, k): rle_encode(m == k) for i, m in masks.items()
                                       for k in range(1, classes.count)}, LONG, classes)
        sample = format_multiclass_csv({(i, k): "1 1" for i in test_ids
                                        for k in range(1, classes.count)}, LONG, classes)
    atomic_write_text(out / "train_masks.csv", train)
    atomic_write_text(out / "sample_submission.csv", sample)
    atomic_write_text(out / "planted_duplicates.csv", "id_a,id_b,kind\n" + "".join(
        f"{a},{b},{k}\n" for a, b, k in planted))


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


def _write_subject(folder: Path, number: int, seed: np.random.SeedSequence, spec: _SetSpec,
                   plans: list[Plan],
                   progress: Callable[[int], None] | None) -> dict[str, np.ndarray]:
    """Render and write one subject's frames and masks; id -> mask (bool, or label map)."""
    frames = _subject_frames(seed, spec.size, spec.per_subject, spec.vessels)
    for src, dst, kind, noise_seed in plans:
        image = frames[src][0]
        if kind == "near":
            rng = np.random.default_rng(int(noise_seed))
            image = np.clip(image.astype(np.int16) + rng.integers(-2, 3, image.shape),
                            0, 255).astype(np.uint8)
        frames[dst] = (image.copy(), _opposite_mask(frames, src))
    masks = {}
    for index, (image, mask) in enumerate(frames, start=1):
        sample_id = f"{number}_{index}"
        write_image(folder / f"{sample_id}.tif", image)
        if spec.vessels:
            write_label_map(folder / f"{sample_id}_mask.png", mask)
        else:
            write_image(folder / f"{sample_id}_mask.tif", mask.astype(np.uint8) * 255)
        masks[sample_id] = mask
        if progress:
            progress(1)
    return masks


def _write_test(folder: Path, seed: np.random.SeedSequence, spec: _SetSpec, workers: int,
                progress: Callable[[int], None] | None) -> None:
    """``test`` frames drawn from fresh subjects, shuffled, numbered 1..test."""
    frames: list[np.ndarray] = []
    for subject_seed in seed.spawn(max(1, -(-spec.test // spec.per_subject))):
        frames.extend(image for image, _ in _subject_frames(subject_seed, spec.size,
                                                            spec.per_subject, spec.vessels))
    order = np.random.default_rng(seed.spawn(1)[0]).permutation(len(frames))
    frames = [frames[i] for i in order[:spec.test]]

    def write(item: tuple[int, np.ndarray]) -> None:
        write_image(folder / f"{item[0]}.tif", item[1])
        if progress:
            progress(1)

    list(thread_map(write, list(enumerate(frames, start=1)), workers))

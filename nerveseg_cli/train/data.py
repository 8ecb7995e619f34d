"""Training data: fold selection, input geometry, a uint8 cache decoded once, batch sampling.

Images are decoded once, brought to the training geometry (resized, or padded to the network's
size multiple) and kept as uint8 in memory, or in a memmap for large sets. Batches are sliced
from the cache and moved to the device, where augmentation and normalisation run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.geometry import Geometry
from nerveseg_cli.io.datasets import (
    Sample,
    discover_with_columns,
    load_image,
    load_label_map,
    load_mask,
    parse_folds,
)
from nerveseg_cli.io.images import LabelMapReader, MaskReader
from nerveseg_cli.io.parallel import thread_map

MEMMAP_ABOVE_BYTES = 4 * 2**30


def choose_geometry(size: tuple[int, int] | None, pad: bool, multiple: int,
                    shapes: Sequence[tuple[int, int]]) -> Geometry:
    """Resize to ``size`` (checked against the multiple), or pad to the largest image rounded
    up to the multiple (the default when no size is given)."""
    if size is not None and not pad:
        width, height = size
        if width % multiple or height % multiple:
            raise NervesegError(
                f"--size {width}x{height} is not a multiple of {multiple}, which this "
                f"architecture needs: use e.g. {round(width / multiple) * multiple}x"
                f"{round(height / multiple) * multiple}, or --pad")
        return Geometry("resize", width, height)
    if size is not None and pad:
        raise NervesegError("--size and --pad exclude each other: --pad keeps the original "
                            "size and pads to the architecture's multiple")
    height = max(h for h, _ in shapes)
    width = max(w for _, w in shapes)
    return Geometry("pad", -(-width // multiple) * multiple, -(-height // multiple) * multiple)


@dataclass
class FoldSplit:
    train: list[Sample]
    val: list[Sample]


def select_folds(path: str | Path, fold: str) -> FoldSplit:
    """Rows with fold >= 0 other than ``fold`` train, ``fold`` validates; ``all``: all train."""
    samples, columns = discover_with_columns(path)
    if "fold" not in columns:
        if fold != "all":
            raise NervesegError(f"{path}: no fold column; run `nerveseg split` first, or train "
                                "on everything with --fold all")
        folds = [0] * len(samples)
    else:
        folds = parse_folds(samples, columns["fold"]).tolist()
    if fold == "all":
        train = [s for s, f in zip(samples, folds, strict=True) if f >= 0]
        val: list[Sample] = []
    else:
        try:
            k = int(fold)
        except ValueError:
            raise NervesegError(f"--fold {fold!r} is not an integer or 'all'") from None
        train = [s for s, f in zip(samples, folds, strict=True) if f >= 0 and f != k]
        val = [s for s, f in zip(samples, folds, strict=True) if f == k]
        if not val:
            known = sorted({f for f in folds if f >= 0})
            raise NervesegError(f"{path}: fold {k} has no images (folds: "
                                f"{', '.join(map(str, known))})")
    if not train:
        raise NervesegError(f"{path}: no training images for fold {fold}")
    unlabeled = [s.id for s in train + val if s.mask is None]
    if unlabeled:
        raise NervesegError(f"{path}: {len(unlabeled)} training/validation images have no mask "
                            f"(first: {', '.join(unlabeled[:5])})")
    return FoldSplit(train, val)


def image_shapes(samples: Sequence[Sample], workers: int) -> list[tuple[int, int]]:
    """Height and width of every image (read from file headers by decoding; cached later)."""
    return list(thread_map(lambda s: load_image(s).shape, samples, workers))


@dataclass
class CachedSet:
    """Images and masks at the training geometry, plus what validation needs."""

    images: np.ndarray  # (N, H, W) uint8
    masks: np.ndarray  # (N, H, W) uint8 0/1, or class indices (label maps)
    positive: np.ndarray  # (N,) bool: mask not empty (some class present)
    original_masks: list[np.ndarray]  # masks at the original size (validation only)
    ids: list[str]
    class_present: np.ndarray | None = None  # label maps: (N, K) bool, each class present


def cache_samples(samples: Sequence[Sample], geometry: Geometry, *, keep_original: bool,
                  reader: MaskReader | LabelMapReader | None = None, workers: int = 4,
                  scratch: Path | None = None,
                  progress: Callable[[int], None] | None = None) -> CachedSet:
    """Decode every image and mask once into uint8 arrays at the training geometry; masks by
    ``reader``'s rule (``--label``), or label maps with a LabelMapReader (``--classes``).
    The caller calls ``reader.finish()`` once every set of a run is read (a fold may well
    hold no foreground); without a reader, one is made and finished here."""
    own_reader = reader is None
    reader = reader or MaskReader()
    classes = reader.classes if isinstance(reader, LabelMapReader) else None
    n = len(samples)
    shape = (n, geometry.height, geometry.width)
    if n * geometry.height * geometry.width * 2 > MEMMAP_ABOVE_BYTES:
        folder = Path(tempfile.mkdtemp(prefix="nerveseg-cache-", dir=scratch))
        images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, shape)
        masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, shape)
    else:
        images = np.empty(shape, np.uint8)
        masks = np.empty(shape, np.uint8)
    originals: list[np.ndarray | None] = [None] * n
    positive = np.zeros(n, bool)
    present = np.zeros((n, classes - 1), bool) if classes else None

    def load(index: int) -> None:
        sample = samples[index]
        image = load_image(sample)
        if classes:
            mask = load_label_map(sample, reader)  # type: ignore[arg-type]
            present[index] = np.bincount(mask.ravel(), minlength=classes)[1:] > 0
        else:
            mask = load_mask(sample, reader)  # type: ignore[arg-type]
        if mask.shape != image.shape:
            raise NervesegError(f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its "
                                f"image is {image.shape[1]}x{image.shape[0]}")
        images[index] = geometry.forward(image)
        masks[index] = geometry.forward_labels(mask) if classes else geometry.forward_mask(mask)
        positive[index] = bool(mask.any())
        if keep_original:
            originals[index] = mask
        if progress:
            progress(1)

    for _ in thread_map(load, list(range(n)), workers):
        pass
    if own_reader:
        reader.finish()
    return CachedSet(images, masks, positive,
                     [m for m in originals if m is not None] if keep_original else [],
                     [s.id for s in samples], present)


def parse_ratio(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        pos, neg = (int(v) for v in text.split(":"))
    except ValueError:
        raise NervesegError(f"--balance {text!r} is not P:N, e.g. 1:1") from None
    if pos < 1 or neg < 1:
        raise NervesegError(f"--balance {text!r}: both parts must be at least 1")
    return pos, neg


def epoch_batches(positive: np.ndarray, batch_size: int, balance: tuple[int, int] | None,
                  generator: torch.Generator) -> list[np.ndarray]:
    """The batches of one epoch (indices into the training set), ceil(N / batch) of them.

    Plain: a shuffled permutation. Balanced: every batch holds positives and negatives at the
    ratio, each class drawn from its own reshuffled cycle (the minority class repeats).
    """
    n = positive.size
    steps = max(1, -(-n // batch_size))
    if balance is None:
        order = torch.randperm(n, generator=generator).numpy()
        return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    pos_idx, neg_idx = np.flatnonzero(positive), np.flatnonzero(~positive)
    if pos_idx.size == 0 or neg_idx.size == 0:
        raise NervesegError("--balance needs both images with and without a mask in training")
    per_pos = max(1, round(batch_size * balance[0] / sum(balance)))
    per_neg = max(1, batch_size - per_pos)

    def cycle(indices: np.ndarray, count: int) -> np.ndarray:
        reps = -(-count // indices.size)
        return np.concatenate([indices[torch.randperm(indices.size, generator=generator)
                                       .numpy()] for _ in range(reps)])[:count]

    pos = cycle(pos_idx, per_pos * steps).reshape(steps, per_pos)
    neg = cycle(neg_idx, per_neg * steps).reshape(steps, per_neg)
    return [np.concatenate([p, q]) for p, q in zip(pos, neg, strict=True)]


def share_out(batches: list[np.ndarray], world: int) -> list[np.ndarray]:
    """The epoch's batches made fit for ``world`` processes, each taking every world-th index of
    every batch: every process must take the same number of steps (each step all-reduces), so
    a last batch too short to give each process an image joins the one before it, and every
    image is still seen exactly once. Only a training set smaller than ``world`` repeats
    images."""
    if world <= 1 or batches[-1].size >= world:
        return batches
    if len(batches) > 1:
        return [*batches[:-2], np.concatenate(batches[-2:])]
    return [np.resize(batches[0], world)]

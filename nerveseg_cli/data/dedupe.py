"""``nerveseg dedupe``: exact and near-duplicate frames, their mask conflicts, and repairs.

Each image is decoded once. From it we keep a 16-byte hash of its decoded pixels (equal hashes
are exact duplicates) and a signature: the image averaged down to 64x48, mean-centred and
scaled to unit length, so the cosine distance between two images is one minus a dot product.
Pairs within ``near_threshold`` are found by blocked matrix products over each comparison
group (a subject, or the whole set; only images of the same size are compared). Masks are kept
bit-packed when non-empty, so the Dice of every pair is computed without re-reading a file.

Pairs join images into duplicate groups (connected components). A pair conflicts when its
masks disagree (Dice below ``conflict_dice``; empty against non-empty always does), and a group
conflicts when one of its pairs does. The policy then decides what happens to each image:

``keep``       untouched;
``drop``       left out of the output manifest (listed in summary.json);
``propagate``  kept with the group's largest mask instead of its empty one (``DIR/masks/``);
``flag``       kept, but still in a conflicting pair that the policy did not resolve.

See docs/dedupe.md for the reasoning behind the defaults.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.data.groups import linked_components
from nerveseg_cli.drawing import draw_outline
from nerveseg_cli.errors import NervesegError
from nerveseg_cli.io.datasets import (
    Sample,
    discover_with_columns,
    load_image,
    load_label_map,
    load_mask,
    write_manifest,
)
from nerveseg_cli.io.images import IMAGE_SUFFIXES, LabelMapReader, MaskReader, read_image
from nerveseg_cli.io.outputs import (
    Outputs,
    atomic_write_text,
    write_image,
    write_label_map,
    write_mask,
)
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.records import json_text

SIGNATURE_SIZE = (64, 48)  # (width, height) of the averaged-down image behind a signature
DEFAULT_NEAR_THRESHOLD = 0.005
DEFAULT_CONFLICT_DICE = 0.2
POLICIES = ("report", "drop-conflicts", "drop-empty", "drop-both", "propagate")
SCOPES = ("subject", "all")
ACTIONS = ("keep", "drop", "propagate", "flag")
DUPLICATES_COLUMNS = ("id_a", "id_b", "subject_a", "subject_b", "kind", "distance",
                      "mask_dice", "conflict", "group")
BLOCK_ROWS = 1024  # rows of the similarity matrix computed at once (80 MB at 20k images)
MAX_PAIRS = 5_000_000  # more near pairs than this means the threshold matches everything
DICE_BLOCK = 256  # pairs whose packed masks are compared at once
MONTAGE_TILE_WIDTH = 290  # montage tiles are shrunk to at most this width (half of 580)
DEFAULT_MONTAGE_PAIRS = 100
OUTLINE_COLOURS = ((0, 0, 255), (0, 255, 0))  # BGR: red outline on the left, green on the right


# --------------------------------------------------------------------------------------------
# per-image fingerprints


def pixel_digest(image: np.ndarray) -> bytes:
    """16 bytes of the SHA-256 of an image's shape, type and decoded pixels."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.digest()[:16]


def image_signature(image: np.ndarray, size: tuple[int, int] = SIGNATURE_SIZE) -> np.ndarray:
    """The image averaged down to ``size``, mean-centred, unit length (float32, flattened).

    Large images are first shrunk by a whole factor (a box average, after cropping the at most
    factor - 1 last rows and columns), which OpenCV does several times faster than one
    fractional area resize and which averages the same way. A flat image has no texture to
    compare, so its signature is all zeros and it is never a near duplicate of anything (it can
    still be an exact one).
    """
    height, width = image.shape[:2]
    factor = max(1, min(width // (2 * size[0]), height // (2 * size[1])))
    if factor > 1:
        image = image[: height - height % factor, : width - width % factor]
        image = cv2.resize(image, (image.shape[1] // factor, image.shape[0] // factor),
                           interpolation=cv2.INTER_AREA)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 1e-3 else np.zeros_like(small)


@dataclass
class Fingerprints:
    """What dedupe keeps of each image after its one decode; index i is the i-th sample."""

    digests: np.ndarray  # (N,) bytes ("S16"), pixel_digest
    signatures: np.ndarray  # (N, D) float32, image_signature
    shapes: np.ndarray  # (N, 2) int64, (height, width)
    mask_areas: np.ndarray  # (N,) int64 foreground pixels; -1 when masks were not read
    packed_masks: list[np.ndarray | None]  # np.packbits of each non-empty mask, else None
    # label maps (--classes): per foreground class, each image's packed mask and its area
    class_masks: list[list[np.ndarray | None]] | None = None
    class_areas: np.ndarray | None = None  # (K, N)

    def mask(self, index: int) -> np.ndarray:
        """Image ``index``'s bool mask (all False when empty or not read), or its label map."""
        height, width = (int(v) for v in self.shapes[index])
        if self.class_masks is not None:
            labels = np.zeros((height, width), dtype=np.uint8)
            for k, packed in enumerate(self.class_masks, start=1):
                if packed[index] is not None:
                    labels[_unpack(packed[index], height, width)] = k
            return labels
        packed = self.packed_masks[index]
        if packed is None:
            return np.zeros((height, width), dtype=bool)
        return _unpack(packed, height, width)


def _unpack(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)


def fingerprint_images(samples: Sequence[Sample], *, use_masks: bool = True,
                       label: int | None = None, workers: int = 4,
                       progress: Callable[[int], None] | None = None,
                       source: str = "masks", classes: Classes | None = None) -> Fingerprints:
    """Decode every image (and mask) once, in threads, and keep only its fingerprint; with
    ``classes``, masks are label maps and each class is kept on its own."""
    reader = MaskReader(label, source)
    labels = LabelMapReader(classes.count, source) if classes is not None else None

    def one(sample: Sample) -> tuple[bytes, np.ndarray, tuple[int, int], list[np.ndarray]]:
        image = load_image(sample)
        masks: list[np.ndarray] = []
        if use_masks and sample.mask is not None:
            mask = load_mask(sample, reader) if labels is None else \
                load_label_map(sample, labels)
            if mask.shape != image.shape:
                raise NervesegError(
                    f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                    f"{sample.image.name} is {image.shape[1]}x{image.shape[0]}")
            masks = [mask] if labels is None else \
                [mask == k for k in range(1, classes.count)]  # type: ignore[union-attr]
        result = (pixel_digest(image), image_signature(image), image.shape, masks)
        if progress:
            progress(1)
        return result

    prints = _empty_prints(len(samples), None if classes is None else classes.count - 1)
    for index, (digest, signature, shape, masks) in enumerate(
            thread_map(one, samples, workers)):  # filled in place: no second copy
        prints.digests[index] = digest
        prints.signatures[index] = signature
        prints.shapes[index] = shape
        _keep_masks(prints, index, masks)
    if use_masks and labels is None:
        reader.finish()
    return prints


def _empty_prints(n: int, classes: int | None) -> Fingerprints:
    return Fingerprints(
        digests=np.zeros(n, dtype="S16"),
        signatures=np.zeros((n, SIGNATURE_SIZE[0] * SIGNATURE_SIZE[1]), dtype=np.float32),
        shapes=np.zeros((n, 2), dtype=np.int64),
        mask_areas=np.full(n, -1, dtype=np.int64),
        packed_masks=[None] * n,
        class_masks=None if classes is None else [[None] * n for _ in range(classes)],
        class_areas=None if classes is None else np.full((classes, n), -1, dtype=np.int64),
    )


def _keep_masks(prints: Fingerprints, index: int, masks: list[np.ndarray]) -> None:
    """Store one image's masks bit-packed (none read: areas stay -1)."""
    if not masks:
        return
    areas = [int(np.count_nonzero(m)) for m in masks]
    prints.mask_areas[index] = sum(areas)
    if prints.class_masks is None:
        prints.packed_masks[index] = np.packbits(masks[0]) if areas[0] else None
        return
    for k, (mask, area) in enumerate(zip(masks, areas, strict=True)):
        prints.class_masks[k][index] = np.packbits(mask) if area else None
        prints.class_areas[k, index] = area  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# finding pairs


def pairs_within_classes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of positions whose ``codes`` are equal; vectorised."""
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(codes) else \
        np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(codes)])
    position = np.arange(len(codes))
    partners = np.repeat(starts + sizes, sizes) - position - 1  # later members of its class
    first = np.repeat(position, partners)
    offset = np.arange(first.size) - np.repeat(np.cumsum(partners) - partners, partners)
    i, j = order[first], order[first + 1 + offset]
    return np.minimum(i, j), np.maximum(i, j)


def comparison_groups(subjects: Sequence[str], shapes: np.ndarray,
                      scope: str) -> list[np.ndarray]:
    """Index arrays (ascending) of the images compared with each other: same scope, same size."""
    if scope not in SCOPES:
        raise NervesegError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    keys = [f"{subject if scope == 'subject' else ''}\0{height}x{width}"
            for subject, (height, width) in zip(subjects, shapes.tolist(), strict=True)]
    if not keys:
        return []
    _, codes = np.unique(np.array(keys, dtype=object), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return [group for group in np.split(order, bounds) if group.size > 1]


def near_pairs(signatures: np.ndarray, groups: Sequence[np.ndarray], threshold: float,
               block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cosine distance) of every pair within a group at distance <= ``threshold``.

    The groups are laid end to end and the similarity matrix is computed ``block_rows`` rows
    at a time, each block against the columns from its first row to the end of its last row's
    group, as one matrix product; pairs across groups are masked out. Small groups (subjects)
    thus share a few large products instead of many tiny ones, which keeps BLAS efficient, and
    memory stays at block_rows x (largest group + block_rows).
    """
    if threshold <= 0 or not groups:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float64)
    order = np.concatenate(groups)
    sizes = np.array([len(g) for g in groups])
    label = np.repeat(np.arange(len(groups)), sizes)
    group_end = np.repeat(np.cumsum(sizes), sizes)  # position after each one's group
    ordered = signatures[order]
    cut = np.float32(1.0 - threshold)
    found_a: list[np.ndarray] = []
    found_b: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    total = 0
    for start in range(0, order.size, block_rows):
        stop = min(start + block_rows, order.size)
        columns_end = int(group_end[stop - 1])
        similarity = ordered[start:stop] @ ordered[start:columns_end].T
        hits = np.triu(similarity >= cut, k=1)  # column position > row position
        if label[start] != label[columns_end - 1]:
            hits &= label[start:stop, None] == label[None, start:columns_end]
        rows, cols = np.nonzero(hits)
        found_a.append(order[start + rows])
        found_b.append(order[start + cols])
        found_d.append(np.maximum(0.0, 1.0 - similarity[rows, cols].astype(np.float64)))
        total += rows.size
        if total > MAX_PAIRS:
            raise NervesegError(
                f"--near-threshold {threshold:g} matches more than {MAX_PAIRS:,} pairs; it "
                f"is far too loose (the default is {DEFAULT_NEAR_THRESHOLD:g})")
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    return np.minimum(a, b), np.maximum(a, b), np.concatenate(found_d)


def pair_mask_dice(prints: Fingerprints, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice of the masks of each pair (1 when both are empty); pairs share an image size. For
    label maps: the mean over the classes of each class's Dice."""
    if prints.class_masks is None:
        return _pair_dice(prints.packed_masks, prints.mask_areas, a, b)
    return np.mean([_pair_dice(packed, areas, a, b) for packed, areas in
                    zip(prints.class_masks, prints.class_areas, strict=True)], axis=0)


def pair_presence_differs(prints: Fingerprints, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether one mask of each pair is empty and the other not (for label maps: for some
    class), which is always a conflict."""
    if prints.class_masks is None:
        return (prints.mask_areas[a] == 0) != (prints.mask_areas[b] == 0)
    areas = prints.class_areas
    return np.any((areas[:, a] == 0) != (areas[:, b] == 0), axis=0)


def _pair_dice(packed_masks: list[np.ndarray | None], mask_areas: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
    """Dice of each pair of bit-packed masks (1 when both are empty)."""
    areas_a, areas_b = mask_areas[a], mask_areas[b]
    result = np.where(areas_a + areas_b == 0, 1.0, 0.0)
    both = np.flatnonzero((areas_a > 0) & (areas_b > 0))
    if both.size == 0:
        return result
    involved, rows = np.unique(np.concatenate([a[both], b[both]]), return_inverse=True)
    row_a, row_b = rows[: both.size], rows[both.size:]
    by_length: dict[int, list[int]] = {}
    for row, index in enumerate(involved):  # images, not pairs: packed lengths differ by size
        by_length.setdefault(packed_masks[index].size, []).append(row)
    for members in by_length.values():
        packed = np.stack([packed_masks[involved[r]] for r in members])
        local = np.full(involved.size, -1, dtype=np.int64)
        local[members] = np.arange(len(members))
        selected = np.flatnonzero(local[row_a] >= 0)  # pairs of this size (both rows share it)
        for start in range(0, selected.size, DICE_BLOCK):
            chosen = selected[start : start + DICE_BLOCK]
            overlap = np.bitwise_count(packed[local[row_a[chosen]]]
                                       & packed[local[row_b[chosen]]]).sum(axis=1,
                                                                           dtype=np.int64)
            pair = both[chosen]
            result[pair] = 2.0 * overlap / (areas_a[pair] + areas_b[pair])
    return result


def duplicate_groups(n_images: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Group number of each image (connected components of the pairs), -1 when alone.

    Groups are numbered from 0 in the order of their first member.
    """
    components = linked_components(n_images, a, b)
    shared = np.bincount(components, minlength=1) > 1  # components in order of first member
    numbering = np.full(shared.size, -1, dtype=np.int64)
    numbering[shared] = np.arange(int(shared.sum()))
    return numbering[components]


# --------------------------------------------------------------------------------------------
# policies


@dataclass
class Pairs:
    """Duplicate pairs as parallel arrays, sorted by (a, b), a < b (sample indices)."""

    a: np.ndarray
    b: np.ndarray
    exact: np.ndarray  # bool
    distance: np.ndarray  # cosine distance of the signatures (0 for exact pairs)
    mask_dice: np.ndarray  # nan when masks were not read
    conflict: np.ndarray  # bool; False when masks were not read

    def __len__(self) -> int:
        return int(self.a.size)


def decide_actions(policy: str, pairs: Pairs, groups: np.ndarray, mask_areas: np.ndarray,
                   digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(action per image, donor index per image or -1) under ``policy`` (module docstring).

    ``drop-conflicts`` drops every member of a conflicting exact-duplicate class;
    ``drop-empty`` the empty-mask members of every conflicting group; ``drop-both`` every
    member of every conflicting group, exact or near; ``propagate`` gives the empty members of
    each conflicting group the group's largest mask (ties: the first image).
    """
    if policy not in POLICIES:
        raise NervesegError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    n = groups.size
    n_groups = int(groups.max(initial=-1)) + 1
    conflicting = pairs.conflict
    in_conflicting_group = np.isin(groups, groups[pairs.a[conflicting]])  # never -1: paired
    empty = mask_areas == 0
    dropped = np.zeros(n, dtype=bool)
    propagated = np.zeros(n, dtype=bool)
    donors = np.full(n, -1, dtype=np.int64)
    if policy == "drop-conflicts":
        _, classes = np.unique(digests, return_inverse=True)
        exact_conflicts = conflicting & pairs.exact
        dropped = np.isin(classes, classes[pairs.a[exact_conflicts]])
    elif policy == "drop-empty":
        dropped = in_conflicting_group & empty
    elif policy == "drop-both":
        dropped = in_conflicting_group
    elif policy == "propagate":
        propagated = in_conflicting_group & empty
        order = np.lexsort((np.arange(n), -mask_areas, groups))  # largest first in each group
        grouped = order[groups[order] >= 0]
        _, first = np.unique(groups[grouped], return_index=True)
        largest = np.full(n_groups, -1, dtype=np.int64)
        largest[groups[grouped[first]]] = grouped[first]
        donors[propagated] = largest[groups[propagated]]
    changed = dropped | propagated
    unresolved = conflicting & ~changed[pairs.a] & ~changed[pairs.b]
    flagged = np.zeros(n, dtype=bool)
    flagged[pairs.a[unresolved]] = True
    flagged[pairs.b[unresolved]] = True
    actions = np.full(n, "keep", dtype=object)
    actions[flagged] = "flag"
    actions[propagated] = "propagate"
    actions[dropped] = "drop"
    return actions, donors


# --------------------------------------------------------------------------------------------
# the command


@dataclass
class DedupeResult:
    source: Path
    samples: list[Sample]
    columns: dict[str, list[str]]  # the input manifest's optional columns, carried over
    prints: Fingerprints
    pairs: Pairs
    groups: np.ndarray  # duplicate group per image, -1 when alone
    actions: np.ndarray  # object array of ACTIONS
    donors: np.ndarray  # for "propagate": index of the image whose mask is copied, else -1
    policy: str
    scope: str
    near_threshold: float
    conflict_dice: float
    use_masks: bool
    classes: Classes | None = None  # label maps: conflicts compare every class

    def input_paths(self) -> list[Path]:
        """The image set and every folder its files lie in."""
        folders = {f.parent for s in self.samples for f in (s.image, s.mask) if f is not None}
        return [self.source, *folders]

    @property
    def kept(self) -> np.ndarray:
        return np.flatnonzero(self.actions != "drop")

    @property
    def summary(self) -> dict[str, int | float | str]:
        pairs = self.pairs
        group_count = int(self.groups.max(initial=-1)) + 1
        conflicting_groups = np.unique(self.groups[pairs.a[pairs.conflict]]).size
        counts = {action: int(np.count_nonzero(self.actions == action)) for action in ACTIONS}
        summary = self._summary(pairs, group_count, conflicting_groups, counts)
        if self.classes is not None and self.use_masks:
            summary["with_each_class"] = {
                name: int(np.count_nonzero(areas > 0)) for name, areas in
                zip(self.classes.foreground, self.prints.class_areas, strict=True)}
        return summary

    def _summary(self, pairs: Pairs, group_count: int, conflicting_groups: int,
                 counts: dict[str, int]) -> dict[str, Any]:
        return {
            "images": len(self.samples),
            "with_nerve": (int(np.count_nonzero(self.prints.mask_areas > 0))
                           if self.use_masks else "not read"),
            "exact_pairs": int(np.count_nonzero(pairs.exact)),
            "near_pairs": int(np.count_nonzero(~pairs.exact)),
            "duplicate_groups": group_count,
            "images_in_groups": int(np.count_nonzero(self.groups >= 0)),
            "conflicting_pairs": int(np.count_nonzero(pairs.conflict)),
            "conflicting_groups": int(conflicting_groups),
            "policy": self.policy,
            "dropped": counts["drop"],
            "propagated": counts["propagate"],
            "flagged": counts["flag"],
            "kept": len(self.samples) - counts["drop"],
            "scope": self.scope,
            "near_threshold": self.near_threshold,
            "conflict_dice": self.conflict_dice,
            "signature": f"{SIGNATURE_SIZE[0]}x{SIGNATURE_SIZE[1]}",
        }

    def duplicates_csv(self) -> str:
        """duplicates.csv: one row per pair (mask_dice and conflict empty without masks)."""
        pairs = self.pairs
        ids = np.array([s.id for s in self.samples], dtype=object)
        subjects = np.array([s.subject for s in self.samples], dtype=object)
        if self.use_masks:
            dice = np.char.mod("%.6g", pairs.mask_dice)
            conflict = pairs.conflict.astype(int).astype(str)
        else:
            dice = conflict = np.full(len(pairs), "")
        columns = (ids[pairs.a], ids[pairs.b], subjects[pairs.a], subjects[pairs.b],
                   np.where(pairs.exact, "exact", "near"), np.char.mod("%.6g", pairs.distance),
                   dice, conflict, self.groups[pairs.a].astype(str))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(DUPLICATES_COLUMNS)
        writer.writerows(zip(*columns, strict=True))
        return buffer.getvalue()


def dedupe(images: str | Path, *, scope: str = "subject",
           near_threshold: float = DEFAULT_NEAR_THRESHOLD,
           conflict_dice: float = DEFAULT_CONFLICT_DICE, policy: str = "drop-conflicts",
           use_masks: bool = True, label: int | None = None, subject_regex: str | None = None,
           classes: Classes | None = None, workers: int = 4,
           progress: Callable[[int], None] | None = None) -> DedupeResult:
    """``nerveseg dedupe``: find duplicate pairs and groups, judge their masks, apply a policy.

    ``use_masks=False`` finds exact and near duplicates only (nothing conflicts, nothing is
    dropped), for image sets without masks. (Keyword options, one per ``nerveseg dedupe``
    flag, as every command's function has.)
    """
    if scope not in SCOPES:
        raise NervesegError(f"--scope {scope!r} is not one of {', '.join(SCOPES)}")
    if policy not in POLICIES:
        raise NervesegError(f"--policy {policy!r} is not one of {', '.join(POLICIES)}")
    if not 0.0 <= near_threshold <= 1.0:
        raise NervesegError(f"--near-threshold {near_threshold} is outside [0, 1]")
    if not 0.0 <= conflict_dice <= 1.0:
        raise NervesegError(f"--conflict-dice {conflict_dice} is outside [0, 1]")
    source = Path(images)
    samples, columns = discover_with_columns(source, subject_regex)
    if use_masks:
        unlabelled = [s.id for s in samples if s.mask is None]
        if unlabelled:
            raise NervesegError(
                f"{source}: {len(unlabelled)} of {len(samples)} images have no mask (first: "
                f"{', '.join(unlabelled[:3])}); dedupe compares masks to find label conflicts, "
                "so give it a labelled set, or pass --no-masks to find duplicates only")
    if classes is not None and label is not None:
        raise NervesegError("--label and --classes exclude each other: --classes keeps every "
                            "class of the label maps, --label takes one")
    classes = None if classes is None or classes.binary else classes
    prints = fingerprint_images(samples, use_masks=use_masks, label=label, workers=workers,
                                source=str(source), classes=classes,
                                progress=progress)

    exact_a, exact_b = pairs_within_classes(prints.digests)
    groups_to_compare = comparison_groups([s.subject for s in samples], prints.shapes, scope)
    near_a, near_b, near_d = near_pairs(prints.signatures, groups_to_compare, near_threshold)
    not_exact = prints.digests[near_a] != prints.digests[near_b]
    a = np.concatenate([exact_a, near_a[not_exact]]).astype(np.int64)
    b = np.concatenate([exact_b, near_b[not_exact]]).astype(np.int64)
    exact = np.r_[np.ones(exact_a.size, bool), np.zeros(int(not_exact.sum()), bool)]
    distance = np.r_[np.zeros(exact_a.size), near_d[not_exact]]
    order = np.lexsort((b, a))
    a, b, exact, distance = a[order], b[order], exact[order], distance[order]
    if use_masks:
        dice = pair_mask_dice(prints, a, b)
        one_empty = pair_presence_differs(prints, a, b)
        conflict = (dice < conflict_dice) | one_empty
    else:
        dice = np.full(a.size, np.nan)
        conflict = np.zeros(a.size, dtype=bool)
    pairs = Pairs(a, b, exact, distance, dice, conflict)
    groups = duplicate_groups(len(samples), a, b)
    actions, donors = decide_actions(policy, pairs, groups, prints.mask_areas, prints.digests)
    return DedupeResult(source, samples, columns, prints, pairs, groups, actions, donors,
                        policy if use_masks else "none (--no-masks)", scope, near_threshold,
                        conflict_dice, use_masks, classes)


# --------------------------------------------------------------------------------------------
# outputs


def write_outputs(result: DedupeResult, out: str | Path, *, overwrite: bool = False,
                  montage: str | Path | None = None, montage_pairs: int = DEFAULT_MONTAGE_PAIRS,
                  workers: int = 4) -> DedupeWritten:
    """Write masks/ (propagated masks), manifest.csv, duplicates.csv and summary.json into
    ``out``, and the montage when asked: all of them, or nothing."""
    if montage is not None and Path(montage).suffix.lower() not in IMAGE_SUFFIXES:
        raise NervesegError(f"{montage}: a montage is an image; name it .png (or .jpg, .tif)")
    with Outputs(inputs=result.input_paths()) as outputs:
        folder = outputs.folder(out, overwrite=overwrite)
        picture = outputs.file(montage, overwrite=overwrite) if montage is not None else None
        files = _write_audit(result, folder, workers)
        drawn = total = 0
        if picture is not None:
            image, total = montage_picture(result, montage_pairs, workers)
            write_image(picture, image)
            drawn = min(total, montage_pairs)
    return DedupeWritten([Path(out) / f.relative_to(folder) for f in files], drawn, total)


@dataclass(frozen=True)
class DedupeWritten:
    files: list[Path]  # in the output folder
    montage_pairs: int  # conflicting pairs drawn in the montage
    conflicting_pairs: int


def _write_audit(result: DedupeResult, out: Path, workers: int) -> list[Path]:
    written: list[Path] = []
    samples = list(result.samples)
    receivers = np.flatnonzero(result.actions == "propagate")
    if receivers.size:
        (out / "masks").mkdir(exist_ok=True)

        def copy_mask(index: int) -> Path:
            path = out / "masks" / f"{samples[index].id}.png"
            mask = result.prints.mask(int(result.donors[index]))
            write_label_map(path, mask) if mask.dtype != bool else write_mask(path, mask)
            return path

        mask_paths = list(thread_map(copy_mask, receivers.tolist(), workers))
        written += mask_paths
        for index, path in zip(receivers.tolist(), mask_paths, strict=True):
            samples[index] = replace(samples[index], mask=path, has_mask=True)
    if result.use_masks:
        samples = [replace(s, has_mask=bool(area > 0)) if action != "propagate" else s
                   for s, area, action in zip(samples, result.prints.mask_areas,
                                              result.actions, strict=True)]

    kept = result.kept
    carried = {name: [values[i] for i in kept] for name, values in result.columns.items()
               if name not in ("dup_group", "action")}
    groups = result.groups[kept]
    carried["dup_group"] = [str(g) if g >= 0 else "" for g in groups]
    carried["action"] = result.actions[kept].tolist()
    manifest = out / "manifest.csv"
    write_manifest(manifest, [samples[i] for i in kept], carried)

    duplicates = out / "duplicates.csv"
    atomic_write_text(duplicates, result.duplicates_csv())

    summary = dict(result.summary)
    summary["source"] = str(result.source)
    summary["dropped_ids"] = [samples[i].id for i in np.flatnonzero(result.actions == "drop")]
    summary["propagated_ids"] = [samples[i].id for i in receivers]
    summary["flagged_ids"] = [samples[i].id for i in np.flatnonzero(result.actions == "flag")]
    summary_path = out / "summary.json"
    atomic_write_text(summary_path, json_text(summary))
    return [manifest, duplicates, summary_path, *written]


def _tile(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The image in BGR with the mask's outline, shrunk to MONTAGE_TILE_WIDTH at most."""
    height, width = image.shape
    scale = min(1.0, MONTAGE_TILE_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    tile = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA),
                        cv2.COLOR_GRAY2BGR)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return draw_outline(tile, small_mask, colour)


def montage_picture(result: DedupeResult, max_pairs: int = DEFAULT_MONTAGE_PAIRS,
            workers: int = 4) -> tuple[np.ndarray, int]:
    """(BGR picture of the conflicting pairs side by side, number of conflicting pairs).

    Each row holds one pair, exact pairs first then by distance: left image with its mask
    outlined in red, right image in green, and a caption with ids, mask areas, kind, distance
    and Dice. At most ``max_pairs`` rows.
    """
    pairs = result.pairs
    conflicting = np.flatnonzero(pairs.conflict)
    conflicting = conflicting[np.lexsort((conflicting, pairs.distance[conflicting],
                                          ~pairs.exact[conflicting]))]
    shown = conflicting[:max_pairs]
    font, scale, thick, caption_height, gap = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1, 18, 4
    samples, prints = result.samples, result.prints

    def row(pair: int) -> np.ndarray:
        a, b = int(pairs.a[pair]), int(pairs.b[pair])
        tiles = [_tile(read_image(samples[i].image), prints.mask(i), colour)
                 for i, colour in zip((a, b), OUTLINE_COLOURS, strict=True)]
        body_height = max(t.shape[0] for t in tiles)
        text = (f"{samples[a].id} ({prints.mask_areas[a]} px) | {samples[b].id} "
                f"({prints.mask_areas[b]} px) | {'exact' if pairs.exact[pair] else 'near'} "
                f"d={pairs.distance[pair]:.2g} dice={pairs.mask_dice[pair]:.2f}")
        text_width = cv2.getTextSize(text, font, scale, thick)[0][0] + 8
        width = max(tiles[0].shape[1] + gap + tiles[1].shape[1], text_width)
        canvas = np.full((caption_height + body_height + gap, width, 3), 32, dtype=np.uint8)
        cv2.putText(canvas, text, (4, caption_height - 5), font, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
        x = 0
        for tile in tiles:
            canvas[caption_height : caption_height + tile.shape[0], x : x + tile.shape[1]] = tile
            x += tile.shape[1] + gap
        return canvas

    rows = list(thread_map(row, shown.tolist(), workers))
    if not rows:
        canvas = np.full((40, 320, 3), 32, dtype=np.uint8)
        cv2.putText(canvas, "no conflicting pairs", (8, 26), font, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
        return canvas, 0
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=32)
              for r in rows]
    return np.concatenate(padded, axis=0), int(conflicting.size)

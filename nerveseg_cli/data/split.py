"""``nerveseg split``: cross-validation folds that cannot leak, and an audit of any split.

Images are joined into units that must share a fold: all frames of a subject (``group =
"subject"``), and all members of a duplicate group (the ``dup_group`` column that ``dedupe``
writes), whatever the grouping. Units are dealt to folds greedily, largest first (equal sizes
in a seeded random order): each goes to the fold whose positive, negative and unlabelled counts
fall furthest below their targets, weighted by what the unit brings. A local search then moves
or swaps units between folds while that brings the folds' counts closer to their targets. That
balances fold sizes and positive rates at once, as far as whole subjects allow.

``--balance P:N`` then leaves out, in every fold, randomly chosen (seeded) surplus positives or
negatives so that each fold holds them at that ratio; those rows keep ``fold = -1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nerveseg_cli.classes import Classes
from nerveseg_cli.data.groups import linked_components
from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.io.datasets import (
    Sample,
    check_sample_files,
    discover_with_columns,
    label_areas,
    mask_areas,
    parse_folds,
    read_manifest_columns,
    write_manifest,
)
from nerveseg_cli.io.images import LabelMapReader, MaskReader
from nerveseg_cli.io.outputs import Outputs

GROUPINGS = ("subject", "none")
LEFT_OUT = -1
# classes counted per unit and balanced across folds
POSITIVE, NEGATIVE, UNLABELLED = 0, 1, 2
REFINE_MAX_UNITS = 500  # each local-search step scores units^2 swaps (6 MB of floats at 500)
REFINE_STEPS = 200


# --------------------------------------------------------------------------------------------
# functional core


def unit_of_images(subjects: Sequence[str], dup_groups: Sequence[str] | None,
                   group: str = "subject") -> np.ndarray:
    """Unit number per image: images of one subject (when grouping by subject) or one
    duplicate group share a unit. Units are numbered in the order of their first image."""
    if group not in GROUPINGS:
        raise NervesegError(f"--group {group!r} is not one of {', '.join(GROUPINGS)}")
    n = len(subjects)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    index = np.arange(n)
    keys: list[np.ndarray] = []
    if group == "subject":
        keys.append(np.asarray(subjects, dtype=str))
    if dup_groups is not None:
        keys.append(np.asarray(dup_groups, dtype=str))
    links_from: list[np.ndarray] = []
    links_to: list[np.ndarray] = []
    for key in keys:
        present = np.flatnonzero(key != "")  # an empty dup_group means "in no group"
        if present.size == 0:
            continue
        _, first, codes = np.unique(key[present], return_index=True, return_inverse=True)
        links_from.append(present)
        links_to.append(present[first[codes]])  # a star: each image to its key's first image
    rows = np.concatenate(links_from) if links_from else index[:0]
    cols = np.concatenate(links_to) if links_to else index[:0]
    return linked_components(n, rows, cols)


def class_counts(units: np.ndarray, has_mask: np.ndarray,
                 class_areas: np.ndarray | None = None) -> np.ndarray:
    """(units, 3) counts of positive, negative and unlabelled images per unit.

    ``has_mask`` holds 1, 0, or -1 for an image without a mask. With ``class_areas`` (K, N)
    of label maps, the positive column becomes one column per class (an image counts in each
    class it holds: multi-label stratification), before the negative and unlabelled ones.
    """
    classes = np.where(has_mask == 1, POSITIVE, np.where(has_mask == 0, NEGATIVE, UNLABELLED))
    n_units = int(units.max(initial=-1)) + 1
    counts = np.zeros((n_units, 3), dtype=np.int64)
    np.add.at(counts, (units, classes), 1)
    if class_areas is None:
        return counts
    presence = np.zeros((n_units, class_areas.shape[0]), dtype=np.int64)
    for k, areas in enumerate(class_areas):
        np.add.at(presence[:, k], units, (areas > 0).astype(np.int64))
    return np.concatenate([presence, counts[:, NEGATIVE:]], axis=1)


def deal_units(counts: np.ndarray, targets: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Fold per unit: largest units first (ties in a random order), each to the fold that
    minimises the squared distance of all folds' class counts from ``targets`` (folds, 3).

    Adding unit u to fold f changes that distance by 2 u.(load_f - target_f) + |u|^2, so the
    best fold is the one with the smallest u.(load_f - target_f); ties go to the fold with
    fewer images, then the lower number.
    """
    n_folds = targets.shape[0]
    shuffled = rng.permutation(counts.shape[0])
    order = shuffled[np.argsort(-counts[shuffled].sum(axis=1), kind="stable")]
    load = np.zeros_like(targets, dtype=np.float64)
    fold_of_unit = np.empty(counts.shape[0], dtype=np.int64)
    fold_numbers = np.arange(n_folds)
    for unit in order:  # one step per unit (a subject), vectorised over folds
        cost = (load - targets) @ counts[unit]
        best = np.lexsort((fold_numbers, load.sum(axis=1), np.round(cost, 9)))[0]
        fold_of_unit[unit] = best
        load[best] += counts[unit]
    return fold_of_unit


def refine_folds(counts: np.ndarray, targets: np.ndarray, fold_of_unit: np.ndarray,
                 max_steps: int = REFINE_STEPS) -> np.ndarray:
    """Improve a dealing by local search: repeatedly apply the single best move of a unit to
    another fold, or swap of two units between folds, while it lowers the squared distance of
    the folds' class counts from ``targets``. Every candidate is scored at once with array
    arithmetic; a fold never loses its last unit. Skipped above REFINE_MAX_UNITS units (the
    swap table grows as units squared; with that many units dealing alone is already even).
    """
    n_units = counts.shape[0]
    if n_units > REFINE_MAX_UNITS or n_units < 2:
        return fold_of_unit
    fold = fold_of_unit.copy()
    units = counts.astype(np.float64)
    squared = (units ** 2).sum(axis=1)
    load = np.zeros_like(targets, dtype=np.float64)
    np.add.at(load, fold, units)
    every_unit = np.arange(n_units)
    for _ in range(max_steps):
        excess = load - targets  # (folds, classes)
        own = excess[fold]  # (units, classes): the excess of each unit's fold
        # moving u from fold f to g changes the cost by 2 u.(excess_g - excess_f) + 2|u|^2
        move = 2 * (units @ excess.T - (units * own).sum(axis=1)[:, None]) + 2 * squared[:, None]
        move[every_unit, fold] = np.inf
        move[np.bincount(fold, minlength=targets.shape[0])[fold] == 1] = np.inf
        # swapping u (fold f) and v (fold g) changes it by 2 (v-u).(excess_f - excess_g)
        # + 2|v-u|^2
        diff = units[None, :, :] - units[:, None, :]  # [u, v] = v - u
        swap = 2 * np.einsum("uvc,uvc->uv", diff, own[:, None, :] - own[None, :, :]) \
            + 2 * (diff ** 2).sum(axis=2)
        swap[fold[:, None] == fold[None, :]] = np.inf
        best_move = np.unravel_index(int(np.argmin(move)), move.shape)
        best_swap = np.unravel_index(int(np.argmin(swap)), swap.shape)
        if min(move[best_move], swap[best_swap]) >= -1e-9:
            break
        if move[best_move] <= swap[best_swap]:
            unit, target = best_move
            load[fold[unit]] -= units[unit]
            load[target] += units[unit]
            fold[unit] = target
        else:
            u, v = best_swap
            load[fold[u]] += units[v] - units[u]
            load[fold[v]] += units[u] - units[v]
            fold[u], fold[v] = fold[v], fold[u]
    return fold


def parse_balance(text: str) -> tuple[float, float]:
    """``P:N`` (e.g. ``1:1``, ``1:2``) as two positive numbers."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*:\s*(\d+(?:\.\d*)?)\s*", text)
    if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
        raise NervesegError(f"--balance {text!r} is not P:N with positive numbers, e.g. 1:1")
    return float(match.group(1)), float(match.group(2))


def balance_folds(folds: np.ndarray, has_mask: np.ndarray, ratio: tuple[float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Folds with surplus positives or negatives set to LEFT_OUT, so that every fold keeps
    them at ``ratio`` (as close as whole images allow); which ones go is random."""
    if np.any(has_mask < 0):
        raise NervesegError("--balance needs every image labelled, but "
                            f"{int(np.count_nonzero(has_mask < 0))} have no mask")
    share_pos, share_neg = ratio
    result = folds.copy()
    for fold in np.unique(folds[folds >= 0]):  # one step per fold
        positives = np.flatnonzero((folds == fold) & (has_mask == 1))
        negatives = np.flatnonzero((folds == fold) & (has_mask == 0))
        scale = min(positives.size / share_pos, negatives.size / share_neg)
        keep_pos = int(np.floor(scale * share_pos + 1e-9))
        keep_neg = int(np.floor(scale * share_neg + 1e-9))
        if keep_pos == 0 or keep_neg == 0:
            outcome = "empty" if keep_pos + keep_neg == 0 else (
                "without positives" if keep_pos == 0 else "without negatives")
            raise NervesegError(
                f"--balance {share_pos:g}:{share_neg:g} leaves fold {fold} {outcome} (it has "
                f"{positives.size} positive and {negatives.size} negative images)")
        result[rng.permutation(positives)[keep_pos:]] = LEFT_OUT
        result[rng.permutation(negatives)[keep_neg:]] = LEFT_OUT
    return result


@dataclass(frozen=True)
class FoldRow:
    fold: int  # LEFT_OUT for the left-out rows
    images: int
    subjects: int
    positives: int
    labelled: int
    mean_area: float  # mean mask area over the images with a nerve; nan when none
    class_positives: dict[str, int] | None = None  # label maps: images holding each class

    @property
    def positive_rate(self) -> float:
        return self.positives / self.labelled if self.labelled else float("nan")

    def class_rate(self, name: str) -> float:
        return self.class_positives[name] / self.labelled \
            if self.labelled and self.class_positives else float("nan")

    def as_dict(self) -> dict:
        row = {"fold": self.fold, "images": self.images, "subjects": self.subjects,
               "positive_pct": round(100 * self.positive_rate, 2)
               if self.labelled else None,
               "mean_mask_area": round(self.mean_area, 1)
               if self.mean_area == self.mean_area else None}
        if self.class_positives is not None:
            row["class_positive_pct"] = {
                name: round(100 * self.class_rate(name), 2) if self.labelled else None
                for name in self.class_positives}
        return row


def fold_table(folds: np.ndarray, subjects: Sequence[str], mask_areas: np.ndarray,
               class_areas: np.ndarray | None = None,
               classes: Classes | None = None) -> list[FoldRow]:
    """One row per fold, in fold order, and a last LEFT_OUT row when some rows are left out
    (with label maps: how many of its images hold each class)."""
    subject_codes = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)[1]
    present = sorted(int(f) for f in np.unique(folds))
    ordered = [f for f in present if f >= 0] + [f for f in present if f < 0]
    rows = []
    for fold in ordered:  # one step per fold
        members = folds == fold
        areas = mask_areas[members]
        positive_areas = areas[areas > 0]
        per_class = None
        if class_areas is not None and classes is not None:
            per_class = {name: int(np.count_nonzero(class_areas[k][members] > 0))
                         for k, name in enumerate(classes.foreground)}
        rows.append(FoldRow(
            fold=fold, images=int(members.sum()),
            subjects=int(np.unique(subject_codes[members]).size),
            positives=int(positive_areas.size), labelled=int(np.count_nonzero(areas >= 0)),
            mean_area=float(positive_areas.mean()) if positive_areas.size else float("nan"),
            class_positives=per_class))
    return rows


@dataclass(frozen=True)
class Leak:
    kind: str  # "subject" or "dup_group"
    name: str
    folds: tuple[int, ...]
    images: int


def find_leaks(folds: np.ndarray, keys: Sequence[str], kind: str) -> list[Leak]:
    """Every key (subject or duplicate group) whose images sit in more than one fold.

    Left-out rows (fold < 0) and empty keys are ignored.
    """
    keys_array = np.asarray(keys, dtype=str)
    used = np.flatnonzero((folds >= 0) & (keys_array != ""))
    if used.size == 0:
        return []
    names, codes = np.unique(keys_array[used], return_inverse=True)
    pairs = np.unique(np.stack([codes, folds[used]], axis=1), axis=0)  # (key, fold), sorted
    folds_per_key = np.bincount(pairs[:, 0], minlength=names.size)
    images_per_key = np.bincount(codes, minlength=names.size)
    from nerveseg_cli.io.datasets import id_sort_key

    leaks = [Leak(kind, str(names[k]), tuple(int(f) for f in pairs[pairs[:, 0] == k, 1]),
                  int(images_per_key[k]))
             for k in np.flatnonzero(folds_per_key > 1)]  # one step per leaking key
    return sorted(leaks, key=lambda leak: id_sort_key(leak.name))


# --------------------------------------------------------------------------------------------
# reading


@dataclass
class ImageTable:
    """An image set with what split needs: optional columns, mask areas, has_mask flags."""

    source: Path
    samples: list[Sample]
    columns: dict[str, list[str]]
    mask_areas: np.ndarray  # -1 for images without a mask
    class_areas: np.ndarray | None = None  # label maps: (K, N) pixels of each class
    classes: Classes | None = None

    @property
    def has_mask(self) -> np.ndarray:
        return np.where(self.mask_areas < 0, -1, (self.mask_areas > 0).astype(np.int64))

    @property
    def subjects(self) -> list[str]:
        return [s.subject for s in self.samples]


def read_image_table(path: str | Path, *, subject_regex: str | None = None,
                     label: int | None = None, classes: Classes | None = None,
                     workers: int = 4,
                     progress: Callable[[int], None] | None = None) -> ImageTable:
    """Discover an image set (or manifest), check its files exist and read its mask areas
    (with ``classes``, each class's area in its label maps)."""
    source = Path(path)
    samples, columns = discover_with_columns(source, subject_regex)
    check_sample_files(samples, source)
    if classes is None or classes.binary:
        areas = mask_areas(samples, MaskReader(label, str(source)), workers, progress)
        return ImageTable(source, samples, columns, areas)
    if label is not None:
        raise NervesegError("--label and --classes exclude each other: --classes keeps every "
                            "class of the label maps, --label takes one")
    per_class = label_areas(samples, LabelMapReader(classes.count, str(source)), workers,
                            progress)
    totals = np.where(per_class[0] < 0, -1, per_class.sum(axis=0))
    return ImageTable(source, samples, columns, totals, per_class, classes)


# --------------------------------------------------------------------------------------------
# the command


@dataclass
class SplitResult:
    table: ImageTable
    folds: np.ndarray  # fold per image, LEFT_OUT for rows left out by balance
    n_folds: int
    holdout: float | None
    group: str
    balance: tuple[float, float] | None
    seed: int
    units: int
    rows: list[FoldRow] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        return {
            "images": len(self.table.samples),
            "folds": self.n_folds,
            "method": (f"holdout {self.holdout:g} (fold 0 = validation)"
                       if self.holdout is not None else f"{self.n_folds}-fold"),
            "group": self.group,
            "units": self.units,
            "balance": (f"{self.balance[0]:g}:{self.balance[1]:g}"
                        if self.balance else None),
            "left_out": int(np.count_nonzero(self.folds == LEFT_OUT)),
            "seed": self.seed,
            "per_fold": [row.as_dict() for row in self.rows],
        }


def split(images: str | Path, *, folds: int = 5, holdout: float | None = None,
          group: str = "subject", balance: str | tuple[float, float] | None = None,
          seed: int = 0, subject_regex: str | None = None, label: int | None = None,
          classes: Classes | None = None, workers: int = 4,
          progress: Callable[[int], None] | None = None) -> SplitResult:
    """``nerveseg split``: assign every image a fold (module docstring); nothing is written.

    (Keyword options, one per ``nerveseg split`` flag, as every command's function has.)"""
    if group not in GROUPINGS:
        raise NervesegError(f"--group {group!r} is not one of {', '.join(GROUPINGS)}")
    if holdout is not None and not 0.0 < holdout < 1.0:
        raise NervesegError(f"--holdout {holdout} must be a fraction between 0 and 1")
    if holdout is None and folds < 2:
        raise NervesegError(f"--folds {folds}: at least 2 folds are needed")
    ratio = parse_balance(balance) if isinstance(balance, str) else balance
    table = read_image_table(images, subject_regex=subject_regex, label=label,
                             classes=classes, workers=workers, progress=progress)
    if ratio is not None and table.class_areas is not None:
        raise NervesegError("--balance works on one class (positives and negatives); it does "
                            "not apply with --classes")
    units = unit_of_images(table.subjects, table.columns.get("dup_group"), group)
    n_units = int(units.max(initial=-1)) + 1
    n_folds = 2 if holdout is not None else folds
    what = "subjects" if group == "subject" else "images"
    if n_units < n_folds:
        joined = " (duplicate groups join some)" if "dup_group" in table.columns else ""
        raise NervesegError(
            f"{images}: {n_folds} folds{' for a holdout' if holdout is not None else ''} but "
            f"only {n_units} {what}{joined} to share out; a {what[:-1]} cannot be split "
            "across folds")
    if group == "none":
        warn("--group none splits by image: frames of one subject then sit on both sides "
             "of a split and validation scores come out optimistic")
    counts = class_counts(units, table.has_mask, table.class_areas)
    totals = counts.sum(axis=0).astype(np.float64)
    shares = (np.array([holdout, 1.0 - holdout]) if holdout is not None
              else np.full(n_folds, 1.0 / n_folds))
    assign_seed, balance_seed = np.random.SeedSequence(seed).spawn(2)
    targets = shares[:, None] * totals[None, :]
    fold_of_unit = refine_folds(counts, targets,
                                deal_units(counts, targets, np.random.default_rng(assign_seed)))
    fold_of_image = fold_of_unit[units]
    empty = np.setdiff1d(np.arange(n_folds), fold_of_image)
    if empty.size:  # cannot happen with n_units >= n_folds, but never write an empty fold
        raise NervesegError(f"{images}: fold {int(empty[0])} would be empty")
    if ratio is not None:
        fold_of_image = balance_folds(fold_of_image, table.has_mask, ratio,
                                      np.random.default_rng(balance_seed))
    result = SplitResult(table, fold_of_image, n_folds, holdout, group, ratio, seed, n_units)
    result.rows = fold_table(fold_of_image, table.subjects, table.mask_areas,
                             table.class_areas, table.classes)
    labelled = [row for row in result.rows if row.labelled and row.fold >= 0]
    if labelled and all(row.positives == 0 for row in labelled):
        warn(f"{images}: no fold holds an image with a mask (0% positive everywhere): every "
             "mask read as empty; check --label, or the masks themselves")
    return result


def write_split(result: SplitResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the manifest with a ``fold`` column (replacing any earlier one)."""
    table = result.table
    inputs = [table.source, *{f.parent for s in table.samples for f in (s.image, s.mask)
                              if f is not None}]
    samples = [replace(s, has_mask=None if flag < 0 else bool(flag))
               for s, flag in zip(table.samples, table.has_mask.tolist(), strict=True)]
    columns = {name: values for name, values in table.columns.items() if name != "fold"}
    columns["fold"] = [str(f) for f in result.folds.tolist()]
    with Outputs(inputs=inputs) as outputs:
        write_manifest(outputs.file(path, overwrite=overwrite), samples, columns)
    return Path(path)


@dataclass
class SplitCheck:
    table: ImageTable
    folds: np.ndarray
    leaks: list[Leak]
    checked: tuple[str, ...]  # "subject", and "dup_group" when the manifest has that column
    rows: list[FoldRow]

    @property
    def leaky(self) -> bool:
        return bool(self.leaks)

    @property
    def summary(self) -> dict:
        return {
            "manifest": str(self.table.source),
            "images": len(self.table.samples),
            "checked": list(self.checked),
            "leaks": [{"kind": leak.kind, "name": leak.name, "folds": list(leak.folds),
                       "images": leak.images} for leak in self.leaks],
            "leaky": self.leaky,
            "per_fold": [row.as_dict() for row in self.rows],
        }


def check_split(manifest: str | Path, *, label: int | None = None,
                classes: Classes | None = None, workers: int = 4,
                progress: Callable[[int], None] | None = None) -> SplitCheck:
    """Audit a split manifest: subjects and duplicate groups that sit in more than one fold."""
    source = Path(manifest)
    if not source.is_file():
        raise NervesegError(f"{source}: no such manifest")
    samples, columns = read_manifest_columns(source)
    if "fold" not in columns:
        raise NervesegError(f"{source}: manifest lacks column fold (nerveseg split adds it)")
    folds = parse_folds(samples, columns["fold"])
    table = read_image_table(source, label=label, classes=classes, workers=workers,
                             progress=progress)
    areas = table.mask_areas
    leaks = find_leaks(folds, table.subjects, "subject")
    checked: tuple[str, ...] = ("subject",)
    if "dup_group" in columns:
        leaks += find_leaks(folds, columns["dup_group"], "dup_group")
        checked += ("dup_group",)
    return SplitCheck(table, folds, leaks, checked,
                      fold_table(folds, table.subjects, areas, table.class_areas, table.classes))

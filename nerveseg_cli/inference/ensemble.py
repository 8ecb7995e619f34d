"""``nerveseg ensemble``: merge probability folders image by image.

The methods (mean, weighted, vote, asme) are :mod:`nerveseg_cli.inference.merging`'s; a vote writes
a 0/255 map, ASME also writes each image's weights to ``weights.csv``. ``presence.csv`` files are
merged the same way (mean, weighted mean, majority vote at the threshold, or the image's ASME
weights) over the members that have one.

Every member must hold the same ids at the same sizes; with ``allow_missing`` an id present in
only some members is merged from those (weights renormalised). Sizes must always agree.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nerveseg_cli.classes import CLASSES_JSON, class_record, write_classes
from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.inference.merging import (
    MEAN,
    MergeRule,
    merge_presence,
    merge_stack,
    normalise_weights,
)
from nerveseg_cli.io.datasets import sort_ids
from nerveseg_cli.io.outputs import Outputs, atomic_write_text
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.io.probmaps import (
    PRESENCE_CSV,
    ProbabilityFolder,
    is_class_folder,
    read_class_folders,
    read_prediction_json,
    read_probability_folder,
    read_probability_values,
    write_prediction_json,
    write_presence,
    write_probability,
)
from nerveseg_cli.lists import parse_list, refuse_repeated_paths

WEIGHTS_CSV = "weights.csv"


# --------------------------------------------------------------------------------------------
# checking the members


def parse_weights(text: str, members: int) -> list[float]:
    """Parse ``--weights w1,w2,...`` (one per member)."""
    weights = parse_list(text, "--weights", float, what="a number", distinct=False,
                         usage="a comma-separated list of numbers, one per folder (equal "
                               "weights may repeat)")
    if len(weights) != members:
        raise NervesegError(f"--weights has {len(weights)} values for {members} folders")
    normalise_weights(weights)
    return weights


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def check_members(folders: Sequence[ProbabilityFolder], allow_missing: bool) -> list[str]:
    """The ids to merge: every folder's ids must agree (unless ``allow_missing``) and every id
    must have one size across folders. Raises a one-line error listing the differences."""
    union = sort_ids(set().union(*(f.files for f in folders)))
    problems = []
    for folder in folders:
        lacking = [i for i in union if i not in folder.files]
        if lacking:
            problems.append(f"{folder.path} lacks {len(lacking)} ids "
                            f"(first: {', '.join(lacking[:5])})")
    size_clashes = []
    for sample_id in union:
        sizes = {f.sizes[sample_id] for f in folders if sample_id in f.sizes}
        if len(sizes) > 1:
            size_clashes.append(sample_id)
    if size_clashes:
        examples = []
        for sample_id in size_clashes[:3]:
            parts = [f"{_size_text(f.sizes[sample_id])} in {f.path}" for f in folders
                     if sample_id in f.sizes]
            examples.append(f"{sample_id} is {' but '.join(parts)}")
        raise NervesegError(f"folders differ in size for {len(size_clashes)} ids ("
                            + "; ".join(examples) + ")"
                            + (f"; also {'; '.join(problems)}" if problems else ""))
    if problems and not allow_missing:
        raise NervesegError("folders hold different ids: " + "; ".join(problems)
                            + "; pass --allow-missing to merge what is there")
    if problems:
        warn("merging what is there: " + "; ".join(problems))
    return union


# --------------------------------------------------------------------------------------------
# the command


@dataclass
class EnsembleResult:
    out: Path
    method: str
    members: list[Path]
    ids: list[str]
    partial: list[str] = field(default_factory=list)  # ids merged from fewer than all members
    presence_written: bool = False
    mean_weights: list[float] | None = None  # asme: each member's mean weight over images


def ensemble(members: Sequence[str | Path], out: str | Path, rule: MergeRule = MEAN, *,
             allow_missing: bool = False, overwrite: bool = False, workers: int = 4,
             progress: Callable[[int], None] | None = None) -> EnsembleResult:
    """``nerveseg ensemble``: merge probability folders into one probability folder by
    ``rule``.

    Writes ``OUT/ID.png`` per id, ``presence.csv`` when members have one, ``weights.csv`` for
    asme (``id`` then one column per member, empty where a member lacks the id), and
    ``prediction.json`` last.
    """
    paths = [Path(m) for m in members]
    _check_member_paths(paths)
    rule.validate(len(paths))
    with Outputs(inputs=paths) as outputs:
        folder = outputs.folder(out, overwrite=overwrite)
        if any(is_class_folder(p) for p in paths):
            return _ensemble_classes(paths, folder, Path(out), rule, allow_missing, workers,
                                     progress)
        folders = [read_probability_folder(p) for p in paths]
        ids = check_members(folders, allow_missing)
        _warn_partial_presence(folders)
        merger = _Merger(folders, rule, folder, progress)
        return _merge_folders(merger, paths, ids, Path(out), allow_missing, workers)


def _ensemble_classes(paths: Sequence[Path], folder: Path, final: Path, rule: MergeRule,
                      allow_missing: bool, workers: int,
                      progress: Callable[[int], None] | None) -> EnsembleResult:
    """Folders of several classes: each class merged on its own into ``folder/<class>``
    (same rule, same checks), with the members' classes, which must agree."""
    read = []
    for path in paths:
        if not is_class_folder(path):
            raise NervesegError(f"{path}: a folder of one class among folders of several "
                                f"({paths[0]} has {CLASSES_JSON}); merge like with like")
        read.append(read_class_folders(path))
    classes = read[0][0]
    for path, (other, _) in zip(paths[1:], read[1:], strict=True):
        other.check_same(classes, str(path), str(paths[0]))
    results = []
    for name in classes.foreground:
        members = [members[name] for _, members in read]
        ids = check_members(members, allow_missing)
        (folder / name).mkdir()
        merger = _Merger(members, rule, folder / name, progress)
        results.append(_merge_folders(merger, [p / name for p in paths], ids, final / name,
                                      allow_missing, workers))
    write_classes(folder, classes)
    write_prediction_json(folder, "ensemble", {"members": [str(p) for p in paths]},
                          _options_record(rule, allow_missing),
                          upstream=[read_prediction_json(p) for p in paths],
                          extra=class_record(classes))
    first = results[0]
    weights = [r.mean_weights for r in results if r.mean_weights is not None]
    return EnsembleResult(final, rule.method, list(paths), first.ids,
                          sorted({i for r in results for i in r.partial}),
                          any(r.presence_written for r in results),
                          [float(w) for w in np.mean(weights, axis=0)] if weights else None)


def _merge_folders(merger: _Merger, paths: Sequence[Path], ids: list[str], final: Path,
                   allow_missing: bool, workers: int) -> EnsembleResult:
    """Merge every id into the merger's folder (the staged output folder of ``final``)."""
    folders, rule, out = merger.folders, merger.rule, merger.out
    results = list(thread_map(merger.merge_one, ids, workers))
    weight_table = np.stack([r[0] for r in results])
    partial = [i for i, row in zip(ids, weight_table, strict=True) if np.isnan(row).any()]
    presence_written = _write_merged_presence(out, ids, [r[1] for r in results], folders)
    mean_weights = None
    if rule.method == "asme":
        atomic_write_text(out / WEIGHTS_CSV, format_weights(ids, paths, weight_table))
        mean_weights = [float(w) for w in np.nanmean(weight_table, axis=0)]
    write_prediction_json(out, "ensemble", {"members": [str(p) for p in paths]},
                          _options_record(rule, allow_missing),
                          upstream=[f.prediction for f in folders],
                          extra={"images": len(ids), "partial_ids": len(partial)})
    return EnsembleResult(final, rule.method, list(paths), ids, partial, presence_written,
                          mean_weights)


def _check_member_paths(paths: Sequence[Path]) -> None:
    if len(paths) < 2:
        raise NervesegError("ensemble needs at least two probability folders")
    refuse_repeated_paths(paths, "folder", "use --method weighted to weight a member more")


def _warn_partial_presence(folders: Sequence[ProbabilityFolder]) -> None:
    lacking = [str(f.path) for f in folders if f.presence is None]
    if lacking and len(lacking) < len(folders):
        warn(f"presence.csv merged from {len(folders) - len(lacking)} of {len(folders)} "
             f"folders (none in {', '.join(lacking)})")


class _Merger:
    """Merges one id's maps (in a worker thread) and writes the result."""

    def __init__(self, folders: Sequence[ProbabilityFolder], rule: MergeRule, out: Path,
                 progress: Callable[[int], None] | None) -> None:
        self.folders, self.rule, self.out, self.progress = folders, rule, out, progress
        self.weights = None if rule.weights is None else np.asarray(rule.weights, np.float64)

    def merge_one(self, sample_id: str) -> tuple[np.ndarray, float | None]:
        """(each member's weight, NaN where it lacks the id; the merged presence or None)."""
        folders, rule = self.folders, self.rule
        present = [k for k, f in enumerate(folders) if sample_id in f.files]
        shape = folders[present[0]].sizes[sample_id]
        stack = np.stack([read_probability_values(folders[k].files[sample_id], shape)
                          for k in present])
        subset = None if self.weights is None else self.weights[present]
        if subset is not None and subset.sum() <= 0:
            raise NervesegError(f"{sample_id}: every folder holding it has weight 0")
        merged, used = merge_stack(stack, rule.method, weights=subset,
                                   threshold=rule.threshold, base=rule.base)
        write_probability(self.out / f"{sample_id}.png", merged)
        full = np.full(len(folders), np.nan)
        full[present] = used
        presence = None
        holders = [k for k in present if folders[k].presence is not None]
        if holders:
            values = np.array([folders[k].presence[sample_id] for k in holders])
            presence = merge_presence(values, rule.method, full[holders], rule.threshold)
        if self.progress:
            self.progress(1)
        return full, presence


def _write_merged_presence(out: Path, ids: Sequence[str], merged: Sequence[float | None],
                           folders: Sequence[ProbabilityFolder]) -> bool:
    """Write presence.csv when some member has one and every id got a presence."""
    if all(f.presence is None for f in folders):
        return False
    without = [i for i, value in zip(ids, merged, strict=True) if value is None]
    if without:  # only with --allow-missing: ids held only by folders without presence
        warn(f"presence.csv not written: {len(without)} ids have no presence in any folder "
             f"(first: {', '.join(without[:5])})")
        return False
    write_presence(out / PRESENCE_CSV, dict(zip(ids, merged, strict=True)))
    return True


def _options_record(rule: MergeRule, allow_missing: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"method": rule.method, "threshold": rule.threshold,
                               "allow_missing": allow_missing}
    if rule.method == "weighted":
        options["weights"] = [float(w) for w in rule.weights or ()]
    if rule.method == "asme":
        options["asme_base"] = rule.base
    return options


def format_weights(ids: Sequence[str], members: Sequence[Path], table: np.ndarray) -> str:
    """weights.csv: ``id`` then one column per member (its path as given), 6 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", *(os.fspath(m) for m in members)])
    for sample_id, row in zip(ids, table, strict=True):
        writer.writerow([sample_id, *("" if np.isnan(w) else f"{w:.6f}" for w in row)])
    return buffer.getvalue()

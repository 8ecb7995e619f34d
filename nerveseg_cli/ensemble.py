"""``nerveseg ensemble``: merge probability folders image by image.

The methods (mean, weighted, vote, asme) are :mod:`nerveseg_cli.merging`'s; a vote writes a
0/255 map, ASME also writes each image's weights to ``weights.csv``. ``presence.csv`` files are
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

import numpy as np

from nerveseg_cli.asme import DEFAULT_BASE
from nerveseg_cli.errors import NervesegError, warn
from nerveseg_cli.io.datasets import sort_ids
from nerveseg_cli.io.outputs import atomic_write_text, prepare_output_dir
from nerveseg_cli.io.parallel import thread_map
from nerveseg_cli.merging import METHODS, merge_presence, merge_stack, normalise_weights
from nerveseg_cli.postprocess import threshold_level
from nerveseg_cli.probmaps import (
    PRESENCE_CSV,
    ProbabilityFolder,
    read_probability_folder,
    read_probability_values,
    write_prediction_json,
    write_presence,
    write_probability,
)

WEIGHTS_CSV = "weights.csv"


# --------------------------------------------------------------------------------------------
# checking the members


def parse_weights(text: str, members: int) -> list[float]:
    """Parse ``--weights w1,w2,...`` (one per member)."""
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise NervesegError(f"--weights {text!r} is not a comma-separated list of numbers") \
            from None
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


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    resolved = out.resolve()
    for path in inputs:
        if path.resolve() == resolved:
            raise NervesegError(f"{out}: the output folder is also an input; choose another "
                                "--out (inputs are never modified)")


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


def ensemble(members: Sequence[str | Path], out: str | Path, *, method: str = "mean",
             weights: Sequence[float] | None = None, threshold: float | None = None,
             asme_base: float = DEFAULT_BASE, allow_missing: bool = False,
             overwrite: bool = False, workers: int = 4,
             progress: Callable[[int], None] | None = None) -> EnsembleResult:
    """``nerveseg ensemble``: merge probability folders into one probability folder.

    Writes ``OUT/ID.png`` per id, ``presence.csv`` when members have one, ``weights.csv`` for
    asme (``id`` then one column per member, empty where a member lacks the id), and
    ``prediction.json`` last.
    """
    paths = [Path(m) for m in members]
    out = Path(out)
    if method not in METHODS:
        raise NervesegError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if len(paths) < 2:
        raise NervesegError("ensemble needs at least two probability folders")
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise NervesegError(f"{path}: folder given twice (as {seen[key]}); use --method "
                                "weighted to weight a member more")
        seen[key] = path
    if weights is not None and method != "weighted":
        raise NervesegError("--weights is only used with --method weighted")
    if method == "weighted":
        if weights is None:
            raise NervesegError("--method weighted needs --weights w1,w2,... (one per folder)")
        if len(weights) != len(paths):
            raise NervesegError(f"--weights has {len(weights)} values for {len(paths)} folders")
        normalise_weights(weights)
    threshold = 0.5 if threshold is None else threshold
    threshold_level(threshold)
    if not (np.isfinite(asme_base) and asme_base > 0):
        raise NervesegError(f"--asme-base {asme_base} must be a positive number")
    _check_out(out, paths)

    folders = [read_probability_folder(p) for p in paths]
    ids = check_members(folders, allow_missing)
    with_presence = [k for k, f in enumerate(folders) if f.presence is not None]
    if with_presence and len(with_presence) < len(folders):
        lacking = [str(folders[k].path) for k in range(len(folders)) if k not in with_presence]
        warn(f"presence.csv merged from {len(with_presence)} of {len(folders)} folders "
             f"(none in {', '.join(lacking)})")
    out = prepare_output_dir(out, overwrite)
    member_weights = None if weights is None else np.asarray(weights, dtype=np.float64)

    def merge_one(sample_id: str) -> tuple[np.ndarray, float | None]:
        present = [k for k, f in enumerate(folders) if sample_id in f.files]
        shape = folders[present[0]].sizes[sample_id]
        stack = np.stack([read_probability_values(folders[k].files[sample_id], shape)
                          for k in present])
        subset = None if member_weights is None else member_weights[present]
        if subset is not None and subset.sum() <= 0:
            raise NervesegError(f"{sample_id}: every folder holding it has weight 0")
        merged, used = merge_stack(stack, method, weights=subset, threshold=threshold,
                                   base=asme_base)
        write_probability(out / f"{sample_id}.png", merged)
        full = np.full(len(folders), np.nan)
        full[present] = used
        presence = None
        holders = [k for k in present if folders[k].presence is not None]
        if holders:
            values = np.array([folders[k].presence[sample_id] for k in holders])
            presence = merge_presence(values, method, full[holders], threshold)
        if progress:
            progress(1)
        return full, presence

    results = list(thread_map(merge_one, ids, workers))
    weight_table = np.stack([r[0] for r in results])
    partial = [i for i, row in zip(ids, weight_table, strict=True) if np.isnan(row).any()]
    presence_written = bool(with_presence)
    if presence_written:
        without = [i for i, r in zip(ids, results, strict=True) if r[1] is None]
        if without:  # only with --allow-missing: ids held only by folders without presence
            warn(f"presence.csv not written: {len(without)} ids have no presence in any folder "
                 f"(first: {', '.join(without[:5])})")
            presence_written = False
        else:
            write_presence(out / PRESENCE_CSV, {i: r[1] for i, r in zip(ids, results,
                                                                         strict=True)})
    mean_weights = None
    if method == "asme":
        atomic_write_text(out / WEIGHTS_CSV, format_weights(ids, paths, weight_table))
        mean_weights = [float(w) for w in np.nanmean(weight_table, axis=0)]
    options = {"method": method, "threshold": threshold, "allow_missing": allow_missing}
    if method == "weighted":
        options["weights"] = [float(w) for w in weights or ()]
    if method == "asme":
        options["asme_base"] = asme_base
    write_prediction_json(out, "ensemble", {"members": [str(p) for p in paths]}, options,
                          upstream=[f.prediction for f in folders],
                          extra={"images": len(ids), "partial_ids": len(partial)})
    return EnsembleResult(out, method, paths, ids, partial, presence_written, mean_weights)


def format_weights(ids: Sequence[str], members: Sequence[Path], table: np.ndarray) -> str:
    """weights.csv: ``id`` then one column per member (its path as given), 6 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", *(os.fspath(m) for m in members)])
    for sample_id, row in zip(ids, table, strict=True):
        writer.writerow([sample_id, *("" if np.isnan(w) else f"{w:.6f}" for w in row)])
    return buffer.getvalue()

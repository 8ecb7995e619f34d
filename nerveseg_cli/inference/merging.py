"""Merging N probability maps of one image: mean, weighted mean, majority vote or ASME.

One rule for ``predict`` (TTA variants, then runs) and ``ensemble`` (folders), for N member
maps p_1..p_N of one image:

* ``mean``: (1/N) sum_i p_i.
* ``weighted``: sum_i w_i p_i with the given weights normalised to sum 1.
* ``vote``: 1 where a strict majority of members is foreground (p_i > threshold), else 0; an
  even split is background.
* ``asme``: sum_i c_i p_i with seed 000's per-image agreement weights
  (:mod:`nerveseg_cli.inference.asme`; the seed papers are listed in docs/models.md).

Stacks are uint8 map values (``ensemble`` reads them from files) or float probabilities
(``predict``'s network outputs).

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import threshold_level
from nerveseg_cli.inference.asme import DEFAULT_BASE, asme_merge, binarise, weighted_probability

METHODS = ("mean", "weighted", "vote", "asme")


def merge_mean(stack: np.ndarray) -> np.ndarray:
    """Mean probability of an (N, H, W) stack as float32.

    uint8 values accumulate member by member (no float copy of the whole stack); float
    probabilities use numpy's mean, as predict always has.
    """
    if stack.dtype == np.uint8:
        n = stack.shape[0]
        return weighted_probability(stack, np.full(n, 1.0 / n))
    return stack.mean(axis=0, dtype=np.float32)


def merge_vote(stack: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """1.0 where more than half the members exceed ``threshold``, else 0.0 (float32)."""
    votes = np.count_nonzero(binarise(stack, threshold), axis=0)
    return (2 * votes > stack.shape[0]).astype(np.float32)


def normalise_weights(weights: Sequence[float]) -> np.ndarray:
    """Non-negative weights with a positive sum, scaled to sum 1."""
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise NervesegError("weights must be a non-empty list of numbers")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise NervesegError(f"weights {','.join(f'{w:g}' for w in array)} must be "
                            "non-negative with a positive sum")
    return array / array.sum()


def merge_stack(stack: np.ndarray, method: str, *, weights: Sequence[float] | None = None,
                threshold: float = 0.5, base: float = DEFAULT_BASE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Merge one image's (N, H, W) stack; returns (probability map, weights used)."""
    n = stack.shape[0]
    if method == "mean":
        return merge_mean(stack), np.full(n, 1.0 / n)
    if method == "weighted":
        if weights is None:
            raise NervesegError("--method weighted needs --weights")
        used = normalise_weights(weights)
        return weighted_probability(stack, used), used
    if method == "vote":
        return merge_vote(stack, threshold), np.full(n, 1.0 / n)
    if method == "asme":
        return asme_merge(stack, threshold, base)
    raise NervesegError(f"method {method!r} is not one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class MergeRule:
    """How to merge: the method and what it needs (weights for ``weighted``, the threshold
    that binarises members for ``vote`` and ``asme``, the ASME base)."""

    method: str = "mean"
    weights: Sequence[float] | None = None
    threshold: float = 0.5
    base: float = DEFAULT_BASE

    def validate(self, members: int) -> MergeRule:
        """Check the rule for ``members`` maps per image."""
        if self.method not in METHODS:
            raise NervesegError(f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.weights is not None and self.method != "weighted":
            raise NervesegError("--weights is only used with --method weighted")
        if self.method == "weighted":
            if self.weights is None:
                raise NervesegError("--method weighted needs --weights w1,w2,... (one per "
                                    "folder)")
            if len(self.weights) != members:
                raise NervesegError(f"--weights has {len(self.weights)} values for {members} "
                                    "folders")
            normalise_weights(self.weights)
        threshold_level(self.threshold)
        if not (np.isfinite(self.base) and self.base > 0):
            raise NervesegError(f"--asme-base {self.base} must be a positive number")
        return self


def merge_presence(values: np.ndarray, method: str, weights: np.ndarray,
                   threshold: float) -> float:
    """Merge members' presence probabilities with the same rule as the maps."""
    if method == "vote":
        return float(2 * np.count_nonzero(values > threshold) > values.size)
    if method == "mean":
        return float(values.mean())
    return float(np.dot(weights / weights.sum(), values))


MEAN = MergeRule()  # the default rule

"""Adaptive Single Model Ensemble (ASME), seed 000 §3.9: weights from agreement.

Given N predictions of one image (TTA variants of one model, or N models), binarise each, build
the N x N matrix A of pairwise Dice similarities, take the eigenvector v of A's largest
eigenvalue (unit length, non-negative) and weight prediction i by

    c_i = base ** v_i / sum_k base ** v_k        (base > 0, default 100)

A prediction that agrees with the others has a large v_i; an outlier that overlaps nothing has
v_i = 0 and keeps only a small weight. ``base`` sets how sharply agreement is rewarded: 1 gives
uniform weights, larger bases favour the consensus more.

Conventions chosen here (the seed leaves them open):

* The Dice of two empty masks is 1, as in Kaggle's metric: predictions that agree there is
  nothing agree perfectly. So N empty variants get uniform weights, and an empty outlier among
  non-empty variants has Dice 0 with each of them.
* When the largest eigenvalue is repeated (e.g. two groups of predictions that never overlap,
  each internally consistent), the eigenvector is not unique; we take the projection of the
  all-ones vector onto that eigenspace, which is unit-normalised, non-negative and treats the
  tied groups alike instead of picking one arbitrarily.

``predict``'s TTA merge and ``ensemble --method asme`` both call these functions.

Seed numbers ("seed 003") refer to the papers listed in docs/models.md, "The seed papers".
"""

from __future__ import annotations

import numpy as np

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.evaluation.postprocess import threshold_level

DEFAULT_BASE = 100.0
# Sums of 0/1 float32 values stay exact below 2**24, so BLAS may accumulate in float32.
_FLOAT32_EXACT = 2**24


def binarise(stack: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Foreground masks of a stack of maps: uint8 values v give v / 255 > threshold (the
    8-bit rule of ``threshold_level``), float probabilities p give p > threshold; bool stays."""
    stack = np.asarray(stack)
    if stack.dtype == bool:
        return stack
    if stack.dtype == np.uint8:
        return stack > threshold_level(threshold)
    return stack > threshold


def dice_similarity_matrix(binary_stack: np.ndarray) -> np.ndarray:
    """(N, ...) masks -> (N, N) float64 pairwise Dice, 2|X∩Y| / (|X| + |Y|).

    All intersections come from one matrix product of the flattened masks; two empty masks have
    Dice 1 (Kaggle's rule), so the diagonal is always 1.
    """
    stack = np.asarray(binary_stack)
    if stack.ndim < 2:
        raise ValueError(f"expected a stack of masks (N, ...), got shape {stack.shape}")
    n = stack.shape[0]
    flat = stack.reshape(n, -1).astype(bool, copy=False)
    union = flat.any(axis=0)
    if np.count_nonzero(union) < union.size // 4:
        # Pixels where every mask is background add nothing to any intersection; dropping them
        # makes the product ~10x cheaper for nerve-sized objects.
        flat = np.compress(union, flat, axis=1)
    dtype = np.float32 if flat.shape[1] < _FLOAT32_EXACT else np.float64
    ones = flat.astype(dtype)
    intersection = (ones @ ones.T).astype(np.float64)
    area = np.diag(intersection)
    total = area[:, None] + area[None, :]
    return np.where(total == 0, 1.0, 2.0 * intersection / np.maximum(total, 1.0))


def leading_eigenvector(similarity: np.ndarray) -> np.ndarray:
    """Unit, non-negative eigenvector of the largest eigenvalue of a symmetric non-negative
    matrix (ties resolved as in the module docstring)."""
    matrix = np.asarray(similarity, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"expected a non-empty square matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError("a similarity matrix must be finite and non-negative")
    if not np.allclose(matrix, matrix.T, atol=1e-9):
        raise ValueError("a similarity matrix must be symmetric")
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)  # ascending eigenvalues
    top = eigenvalues[-1]
    basis = eigenvectors[:, eigenvalues >= top - 1e-9 * max(1.0, abs(top))]
    ones = np.ones(matrix.shape[0])
    vector = basis @ (basis.T @ ones)
    norm = np.linalg.norm(vector)
    if norm < 1e-12:  # cannot happen for a non-negative matrix; kept as a safe fallback
        vector = eigenvectors[:, -1] * np.sign(eigenvectors[:, -1].sum() or 1.0)
        norm = np.linalg.norm(vector)
    # Perron-Frobenius: the vector is non-negative; clip rounding noise such as -1e-17.
    return np.clip(vector / norm, 0.0, None)


def weights_from_similarity(similarity: np.ndarray, base: float = DEFAULT_BASE) -> np.ndarray:
    """ASME weights base**v / sum(base**v) for a Dice-similarity matrix (softmax of v ln base)."""
    if not (np.isfinite(base) and base > 0):
        raise NervesegError(f"ASME base {base} must be a positive number")
    logits = leading_eigenvector(similarity) * np.log(base)
    scaled = np.exp(logits - logits.max())
    return scaled / scaled.sum()


def asme_weights(binary_stack: np.ndarray, base: float = DEFAULT_BASE) -> np.ndarray:
    """ASME weights of N binarised predictions of one image (shape (N, ...))."""
    return weights_from_similarity(dice_similarity_matrix(binary_stack), base)


def weighted_probability(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_i w_i p_i as float32 probabilities; uint8 maps are read as value / 255.

    Accumulates member by member (each step vectorised over the pixels) rather than through a
    BLAS matrix-vector product: for a handful of members that is as fast single-threaded, and
    it does not start BLAS threads that fight the per-image worker threads for the cores.
    """
    stack = np.asarray(stack)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != stack.shape[:1]:
        raise ValueError(f"{weights.size} weights for {stack.shape[0]} maps")
    if stack.dtype == np.uint8:
        weights = weights / np.float32(255)
    merged = np.multiply(stack[0], weights[0], dtype=np.float32)
    term = np.empty_like(merged)
    for member, weight in zip(stack[1:], weights[1:], strict=True):
        np.multiply(member, weight, out=term, dtype=np.float32)
        merged += term
    return np.clip(merged, 0.0, 1.0, out=merged)


def asme_merge(prob_stack: np.ndarray, threshold: float = 0.5,
               base: float = DEFAULT_BASE) -> tuple[np.ndarray, np.ndarray]:
    """Merge N predictions of one image with ASME weights.

    ``prob_stack`` is (N, H, W): uint8 map values or float probabilities. Returns the merged
    float32 probability map and the (N,) weights.
    """
    weights = asme_weights(binarise(prob_stack, threshold), base)
    return weighted_probability(prob_stack, weights), weights

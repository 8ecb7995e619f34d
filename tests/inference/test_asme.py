"""ASME (seed 000 §3.9): the worked example, the pairwise Dice matrix, the weights' invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.inference.asme import (
    asme_merge,
    asme_weights,
    binarise,
    dice_similarity_matrix,
    leading_eigenvector,
    weights_from_similarity,
)

# Seed 000, Table 1: Dice similarity of the four flip variants of test image 9.tif
# (origin, fliplr, flipud, fliplr+ud).
TABLE_1 = np.array([
    [1.00, 0.00, 0.52, 0.79],
    [0.00, 1.00, 0.00, 0.00],
    [0.52, 0.00, 1.00, 0.65],
    [0.79, 0.00, 0.65, 1.00],
])


def reference_dice_matrix(masks: np.ndarray) -> np.ndarray:
    """Plain pairwise Dice, one pair at a time; two empty masks score 1."""
    n = len(masks)
    result = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            total = masks[i].sum() + masks[j].sum()
            result[i, j] = 1.0 if total == 0 else 2 * (masks[i] & masks[j]).sum() / total
    return result


def test_worked_example_eigenvector() -> None:
    np.testing.assert_allclose(leading_eigenvector(TABLE_1), [0.5810, 0.0, 0.5341, 0.6141],
                               atol=5e-5)


def test_worked_example_weights_with_base_100() -> None:
    np.testing.assert_allclose(weights_from_similarity(TABLE_1, 100.0),
                               [0.3291, 0.0227, 0.2651, 0.3831], atol=5e-5)


@settings(max_examples=40, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 9))))
def test_dice_matrix_matches_pairwise_reference(masks: np.ndarray) -> None:
    matrix = dice_similarity_matrix(masks)
    np.testing.assert_allclose(matrix, reference_dice_matrix(masks), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.diag(matrix), 1.0)
    np.testing.assert_array_equal(matrix, matrix.T)


def test_two_empty_masks_have_dice_one_and_get_equal_weights() -> None:
    empty = np.zeros((3, 5, 4), dtype=bool)
    np.testing.assert_array_equal(dice_similarity_matrix(empty), np.ones((3, 3)))
    np.testing.assert_allclose(asme_weights(empty), [1 / 3] * 3)


@settings(max_examples=40, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 6), st.integers(2, 6), st.integers(2, 6))),
       st.floats(0.5, 1000.0), st.randoms(use_true_random=False))
def test_weights_are_a_distribution_and_follow_permutations(masks: np.ndarray, base: float,
                                                            rnd) -> None:
    weights = asme_weights(masks, base)
    assert weights.shape == (len(masks),)
    assert np.all(weights >= 0)
    assert weights.sum() == pytest.approx(1.0)
    order = list(range(len(masks)))
    rnd.shuffle(order)
    np.testing.assert_allclose(asme_weights(masks[order], base), weights[order], atol=1e-9)


def test_base_one_gives_uniform_weights() -> None:
    masks = np.random.default_rng(1).random((4, 8, 8)) > 0.5
    np.testing.assert_allclose(asme_weights(masks, base=1.0), [0.25] * 4)


def test_outlier_gets_the_smallest_weight() -> None:
    masks = np.zeros((4, 20, 20), dtype=bool)
    masks[:3, 5:15, 5:15] = True  # three agreeing predictions: v = 1/sqrt(3) each
    masks[3, 0:3, 17:20] = True  # disjoint from the others: v = 0
    weights = asme_weights(masks)
    assert weights.argmin() == 3
    assert weights[3] == pytest.approx(1 / (1 + 3 * 100 ** (1 / np.sqrt(3))), rel=1e-6)


def test_tied_groups_share_weight_equally() -> None:
    """Two groups that never overlap: the eigenvalue is repeated and neither group is favoured."""
    masks = np.zeros((4, 10, 10), dtype=bool)
    masks[:2, :5] = True
    masks[2:, 5:] = True
    np.testing.assert_allclose(asme_weights(masks), [0.25] * 4)
    np.testing.assert_allclose(leading_eigenvector(np.eye(3)), [1 / np.sqrt(3)] * 3)


def test_merge_is_the_weighted_sum_for_values_and_probabilities() -> None:
    rng = np.random.default_rng(2)
    values = rng.integers(0, 256, (3, 6, 7), dtype=np.uint8)
    merged, weights = asme_merge(values, threshold=0.5, base=100.0)
    expected_weights = asme_weights(values > 127, 100.0)
    np.testing.assert_allclose(weights, expected_weights)
    reference = np.tensordot(expected_weights, values / 255.0, axes=1)
    np.testing.assert_allclose(merged, reference, atol=1e-6)
    merged_float, weights_float = asme_merge(values / 255.0, threshold=0.5, base=100.0)
    np.testing.assert_allclose(weights_float, weights)
    np.testing.assert_allclose(merged_float, merged, atol=1e-6)


def test_binarise_uses_the_8_bit_rule() -> None:
    values = np.array([[127, 128, 153, 154]], dtype=np.uint8)
    np.testing.assert_array_equal(binarise(values, 0.5), [[False, True, True, True]])
    np.testing.assert_array_equal(binarise(values, 0.6), [[False, False, False, True]])


def test_bad_base_and_matrices_are_refused() -> None:
    with pytest.raises(NervesegError, match="positive"):
        weights_from_similarity(TABLE_1, 0.0)
    with pytest.raises(ValueError, match="symmetric"):
        leading_eigenvector(np.array([[1.0, 0.2], [0.1, 1.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        leading_eigenvector(np.array([[1.0, -0.2], [-0.2, 1.0]]))

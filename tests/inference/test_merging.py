"""One merge rule for predict and ensemble: mean, weighted, vote, ASME."""

from __future__ import annotations

import numpy as np
import pytest

from nerveseg_cli.inference.merging import merge_stack


def test_merge_stack_mean_and_asme() -> None:
    stack = np.stack([np.full((3, 3), 0.9), np.full((3, 3), 0.8), np.zeros((3, 3))]) \
        .astype(np.float32)
    mean, weights = merge_stack(stack, "mean", threshold=0.5, base=100)
    np.testing.assert_allclose(mean, stack.mean(0))
    asme, weights = merge_stack(stack, "asme", threshold=0.5, base=100)
    assert weights[2] < weights[0] == pytest.approx(weights[1])  # the outlier weighs least
    assert asme.mean() > mean.mean()


def test_vote_ties_are_background() -> None:
    stack = np.array([[[255, 0, 255]], [[0, 0, 255]]], dtype=np.uint8)
    merged, _ = merge_stack(stack, "vote")
    np.testing.assert_array_equal(merged, [[0.0, 0.0, 1.0]])

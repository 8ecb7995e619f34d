"""Scoring core against a plain numpy reference and Kaggle's edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nerveseg_cli.evaluation.postprocess import threshold_level
from nerveseg_cli.evaluation.score import (
    counts_from_histograms,
    dice,
    frange,
    iou,
    pixel_auc,
    summarize,
    sweep,
    value_histograms,
)


def reference_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(pred, truth).sum() / total


def reference_auc(values: np.ndarray, truth: np.ndarray) -> float:
    pos, neg = values[truth].astype(float), values[~truth].astype(float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def stack_histograms(values: list[np.ndarray], truths: list[np.ndarray]):
    pairs = [value_histograms(v, t) for v, t in zip(values, truths, strict=True)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def random_set(seed: int, n: int = 6, shape=(9, 7)):
    rng = np.random.default_rng(seed)
    values = [rng.integers(0, 256, shape).astype(np.uint8) for _ in range(n)]
    truths = [rng.random(shape) < rng.uniform(0, 0.6) for _ in range(n)]
    truths[0][:] = False  # an empty ground truth
    values[1][:] = 0  # an empty prediction
    return values, truths


@given(st.integers(0, 10_000), st.floats(0, 1), st.integers(0, 40))
@settings(max_examples=80, deadline=None)
def test_counts_match_reference(seed: int, threshold: float, min_area: int) -> None:
    values, truths = random_set(seed)
    truth_hist, all_hist = stack_histograms(values, truths)
    counts = counts_from_histograms(truth_hist, all_hist, threshold_level(threshold), min_area)
    for i, (v, t) in enumerate(zip(values, truths, strict=True)):
        pred = v > threshold_level(threshold)
        if pred.sum() < min_area:
            pred = np.zeros_like(pred)
        assert counts.tp[i] == np.logical_and(pred, t).sum()
        assert counts.fp[i] == np.logical_and(pred, ~t).sum()
        assert counts.fn[i] == np.logical_and(~pred, t).sum()
        assert counts.tn[i] == np.logical_and(~pred, ~t).sum()
        assert dice(counts)[i] == pytest.approx(reference_dice(pred, t))


def test_foreground_means_value_over_255_times_threshold() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    truth = np.ones_like(values, dtype=bool)
    truth_hist, all_hist = stack_histograms([values], [truth])
    for threshold in (0.0, 0.3, 0.5, 0.6, 0.99, 1.0):
        expected = int((np.arange(256) / 255 > threshold + 1e-12).sum())
        counts = counts_from_histograms(truth_hist, all_hist, threshold_level(threshold))
        assert counts.tp[0] == expected, threshold


def test_kaggle_edge_cases() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    some = empty.copy()
    some[1:3, 1:3] = True
    cases = [(empty, empty, 1.0), (empty, some, 0.0), (some, empty, 0.0), (some, some, 1.0)]
    values = [p.astype(np.uint8) * 255 for p, _, _ in cases]
    truth_hist, all_hist = stack_histograms(values, [t for _, t, _ in cases])
    counts = counts_from_histograms(truth_hist, all_hist, 127)
    np.testing.assert_allclose(dice(counts), [c[2] for c in cases])
    np.testing.assert_allclose(iou(counts), [1.0, 0.0, 0.0, 1.0])
    summary = summarize(counts)
    assert summary["dice"] == 0.5
    assert (summary["presence_tp"], summary["presence_fp"], summary["presence_fn"],
            summary["presence_tn"]) == (1, 1, 1, 1)
    assert summary["dice_on_positive"] == 0.5 and summary["dice_on_empty"] == 0.5


def test_summary_pixel_figures_pool_all_images() -> None:
    values, truths = random_set(3)
    truth_hist, all_hist = stack_histograms(values, truths)
    summary = summarize(counts_from_histograms(truth_hist, all_hist, 127))
    pred = np.stack(values) > 127
    truth = np.stack(truths)
    tp, fp = (pred & truth).sum(), (pred & ~truth).sum()
    fn, tn = (~pred & truth).sum(), (~pred & ~truth).sum()
    assert summary["precision"] == pytest.approx(tp / (tp + fp))
    assert summary["recall"] == pytest.approx(tp / (tp + fn))
    assert summary["specificity"] == pytest.approx(tn / (tn + fp))
    assert summary["pixel_accuracy"] == pytest.approx((tp + tn) / truth.size)
    assert summary["dice"] == pytest.approx(np.mean([reference_dice(p, t)
                                                      for p, t in zip(pred, truth, strict=True)]))


@given(arrays(np.uint8, (6, 5)), arrays(bool, (6, 5)))
@settings(max_examples=100, deadline=None)
def test_auc_matches_pairwise_reference(values: np.ndarray, truth: np.ndarray) -> None:
    truth_hist, all_hist = stack_histograms([values], [truth])
    auc = pixel_auc(truth_hist, all_hist)
    if truth.all() or not truth.any():
        assert np.isnan(auc)
    else:
        assert auc == pytest.approx(reference_auc(values, truth))


def test_sweep_matches_pointwise_scoring() -> None:
    values, truths = random_set(11, n=8)
    truth_hist, all_hist = stack_histograms(values, truths)
    thresholds, areas = frange("0.2:0.8:0.1", "t"), frange("0:30:10", "a", integer=True)
    result = sweep(truth_hist, all_hist, thresholds, areas)
    assert result.mean_dice.shape == (7, 4)
    for i, t in enumerate(thresholds):
        for j, a in enumerate(areas):
            point = counts_from_histograms(truth_hist, all_hist, threshold_level(t), int(a))
            assert result.mean_dice[i, j] == pytest.approx(dice(point).mean())
    t, a, best = result.best
    assert best == pytest.approx(result.mean_dice.max())


def test_frange_includes_stop_and_rejects_nonsense() -> None:
    np.testing.assert_allclose(frange("0.3:0.7:0.05", "t"), np.round(np.arange(9) * 0.05 + 0.3,
                                                                      10))
    assert frange("0:5000:250", "a", integer=True).tolist()[-1] == 5000
    assert frange("0.4", "t").tolist() == [0.4]
    from nerveseg_cli.errors import NervesegError

    for bad in ("a:b:c", "1:0:0.1", "0:1:0", "0:1"):
        with pytest.raises(NervesegError):
            frange(bad, "--sweep-threshold")


@given(arrays(bool, (7, 9)), arrays(bool, (7, 9)), st.floats(0, 1))
@settings(max_examples=100, deadline=None)
def test_binary_maps_match_reference(pred: np.ndarray, truth: np.ndarray,
                                     threshold: float) -> None:
    truth_hist, all_hist = value_histograms(pred.astype(np.uint8) * 255, truth)
    counts = counts_from_histograms(truth_hist[None], all_hist[None], threshold_level(threshold))
    expected = pred if threshold_level(threshold) < 255 else np.zeros_like(pred)
    assert counts.tp[0] == (expected & truth).sum()
    assert counts.fp[0] == (expected & ~truth).sum()
    assert dice(counts)[0] == pytest.approx(reference_dice(expected, truth))

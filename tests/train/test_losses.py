"""Losses against hand-computed values, and erosion mask smoothing targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.train.losses import (
    dice_loss,
    erosion_smoothed_targets,
    focal_loss,
    lovasz_hinge_loss,
    make_loss,
    softmax_dice_loss,
    softmax_tversky_loss,
    tversky_loss,
)

BIG = 20.0  # sigmoid(20) == 1 to float precision


def logits_from(prob: list[list[float]]) -> torch.Tensor:
    p = torch.tensor(prob, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.log(p / (1 - p)).view(len(prob), 1, 1, -1)


def test_dice_is_per_image_and_punishes_false_positives_on_empty_images() -> None:
    # image 1: perfect on 2 pixels; image 2: empty truth, 2 pixels predicted.
    logits = torch.tensor([[BIG, BIG, -BIG, -BIG], [BIG, BIG, -BIG, -BIG]]).view(2, 1, 1, 4)
    target = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]]).view(2, 1, 1, 4)
    expected_first = 1 - (2 * 2 + 1) / (2 + 2 + 1)  # 0
    expected_second = 1 - (0 + 1) / (2 + 0 + 1)  # 2/3
    assert float(dice_loss(logits, target)) == pytest.approx((expected_first + expected_second)
                                                             / 2, abs=1e-6)
    # A batch Dice would hide the empty image's false positives: (1 - 9/9) = 0 for image 1.
    assert float(dice_loss(logits[1:], target[1:])) == pytest.approx(2 / 3, abs=1e-6)


def test_focal_matches_formula() -> None:
    p, y, alpha, gamma = 0.8, 1.0, 0.25, 2.0
    logits = logits_from([[p]])
    target = torch.tensor([[y]], dtype=torch.float64).view(1, 1, 1, 1)
    expected = alpha * (1 - p) ** gamma * -math.log(p)
    assert float(focal_loss(logits, target, alpha, gamma)) == pytest.approx(expected)
    p, y = 0.3, 0.0
    logits = logits_from([[p]])
    target = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    expected = (1 - alpha) * p ** gamma * -math.log(1 - p)
    assert float(focal_loss(logits, target, alpha, gamma)) == pytest.approx(expected)


def test_tversky_reduces_to_dice_at_one_half() -> None:
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(3, 1, 4, 5)))
    target = torch.from_numpy((rng.random((3, 1, 4, 5)) > 0.5).astype(np.float64))
    assert float(tversky_loss(logits, target, 0.5, 0.5)) == pytest.approx(
        float(dice_loss(logits, target)))


def test_lovasz_zero_when_confidently_right_positive_otherwise() -> None:
    target = torch.tensor([[1.0, 0, 1, 0]]).view(1, 1, 1, 4)
    right = (2 * target - 1) * 5
    assert float(lovasz_hinge_loss(right, target)) == 0.0
    assert float(lovasz_hinge_loss(-right, target)) > 0


def test_make_loss_combines_with_weights() -> None:
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(2, 1, 3, 3))).float()
    target = torch.from_numpy((rng.random((2, 1, 3, 3)) > 0.5).astype(np.float32))
    combined = make_loss("bce+dice", [2.0, 0.5])(logits, target)
    expected = 2 * torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + \
        0.5 * dice_loss(logits, target)
    assert float(combined) == pytest.approx(float(expected))
    with pytest.raises(NervesegError, match="unknown loss"):
        make_loss("dice+iou")
    with pytest.raises(NervesegError, match="2 values for 1"):
        make_loss("dice", [1, 2])


def test_ems_targets_match_seed_definition() -> None:
    import cv2

    mask = np.zeros((20, 20), np.uint8)
    mask[3:17, 4:15] = 1
    eps = 0.1
    eroded = cv2.erode(mask, np.ones((9, 9), np.uint8))
    expected = np.where(eroded == 1, 1 - eps, np.where(mask == 1, 1.0, 0.0))
    got = erosion_smoothed_targets(torch.from_numpy(mask).float().view(1, 1, 20, 20), 9, eps)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=1e-6)
    assert (erosion_smoothed_targets(torch.ones(1, 1, 4, 4), 0, 0.1) == 1).all()


def _reference_class_dice(prob: np.ndarray, target: np.ndarray) -> float:
    """Soft Dice loss per (image, class) in plain numpy, summed over classes, mean over images:
    prob and target are (N, K, P) for the K foreground classes."""
    inter = (prob * target).sum(2)
    per_pair = 1 - (2 * inter + 1) / (prob.sum(2) + target.sum(2) + 1)
    return float(per_pair.sum(1).mean())


def test_softmax_dice_sums_the_foreground_classes_against_a_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 5, 6), generator=generator)
    labels[1][labels[1] == 2] = 0  # image 1 lacks class 2: it pays for the mass painted there
    target = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).to(torch.float64)
    prob = torch.softmax(logits, 1).numpy()
    expected = _reference_class_dice(prob[:, 1:].reshape(3, 3, -1),
                                     target.numpy()[:, 1:].reshape(3, 3, -1))
    assert float(softmax_dice_loss(logits, target)) == pytest.approx(expected, rel=1e-12)
    assert float(softmax_tversky_loss(logits, target)) == pytest.approx(expected, rel=1e-12)


def test_one_foreground_class_is_the_binary_loss() -> None:
    """A softmax over (background, class) with logits (0, z) is sigmoid(z): every loss of the
    softmax and of --multilabel equals the binary one on one foreground class."""
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(4, 1, 6, 7, generator=generator, dtype=torch.float64)
    truth = (torch.rand(4, 1, 6, 7, generator=generator) > 0.6).to(torch.float64)
    truth[2] = 0  # an empty image
    two_channel = torch.cat([torch.zeros_like(z), z], 1)
    one_hot = torch.cat([1 - truth, truth], 1)
    binary = make_loss("bce+dice")(z, truth)
    assert float(make_loss("bce+dice", mode="softmax")(two_channel, one_hot)) == \
        pytest.approx(float(binary), rel=1e-6)
    assert float(make_loss("bce+dice", mode="multilabel")(z, truth)) == \
        pytest.approx(float(binary), rel=1e-6)


def test_multilabel_losses_are_each_class_binary_loss_summed() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 2, 5, 5, generator=generator, dtype=torch.float64)
    target = (torch.rand(3, 2, 5, 5, generator=generator) > 0.5).to(torch.float64)
    for name in ("dice", "bce", "focal", "tversky"):
        combined = make_loss(name, mode="multilabel")(logits, target)
        each = sum(make_loss(name)(logits[:, k:k + 1], target[:, k:k + 1]) for k in range(2))
        assert float(combined) == pytest.approx(float(each), rel=1e-6), name

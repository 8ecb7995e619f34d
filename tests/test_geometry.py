"""Input geometry: label maps reach the network's size by the binary masks' rule, class by class,
aligned with the area-resized image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerveseg_cli.geometry import Geometry


def disks(seed: int, height: int, width: int, values: int, count: int) -> np.ndarray:
    """A label map of ``count`` filled disks of random classes 1..values-1 (later ones on top)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    for _ in range(count):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(labels, centre, int(rng.integers(1, 40)), int(rng.integers(1, values)), -1)
    return labels


sizes = st.tuples(st.integers(8, 300), st.integers(8, 300))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=sizes, target=sizes, count=st.integers(0, 6))
def test_two_classes_resize_exactly_as_a_binary_mask(seed: int, shape: tuple[int, int],
                                                     target: tuple[int, int],
                                                     count: int) -> None:
    labels = disks(seed, *shape, values=2, count=count)
    geometry = Geometry("resize", *target)
    assert np.array_equal(geometry.forward_labels(labels),
                          geometry.forward_mask(labels.astype(bool)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), target=sizes)
def test_classes_apart_resize_each_as_its_own_mask(seed: int, target: tuple[int, int]) -> None:
    # one class per half with a wide gap: no output pixel draws on two classes
    left, right = disks(seed, 200, 90, 2, 3), disks(seed + 1, 200, 90, 2, 3)
    labels = np.concatenate([left, np.zeros((200, 120), np.uint8), right * 2], axis=1)
    geometry = Geometry("resize", *target)
    resized = geometry.forward_labels(labels)
    assert set(np.unique(resized).tolist()) <= {0, 1, 2}
    for value in (1, 2):
        assert np.array_equal(resized == value, geometry.forward_mask(labels == value) > 0)


@pytest.mark.parametrize("offset", [0, 2])
def test_downscaled_labels_are_the_area_resized_classes_over_one_half(offset: int) -> None:
    # edges at 3/4 or 1/4 coverage of an output pixel, never a tie at 1/2; nearest-neighbour
    # resizing by 4 would move every edge by 1.5 source pixels, up and left
    labels = np.zeros((512, 512), np.uint8)
    labels[101 + offset:301 + offset, 101:301] = 1
    labels[341:421, 201 + offset:303 + offset] = 2
    resized = Geometry("resize", 128, 128).forward_labels(labels)
    for value in (1, 2):
        area = cv2.resize((labels == value).astype(np.float32), (128, 128),
                          interpolation=cv2.INTER_AREA)
        assert np.array_equal(resized == value, area > 0.5)


def test_where_shares_meet_the_largest_foreground_share_wins_over_a_smaller_background() -> None:
    # a 2x2 block shrunk to one pixel: two nerve, one vessel, one background pixel -> nerve;
    # one of each foreground and two background -> background (no share beats what is left)
    geometry = Geometry("resize", 1, 1)
    assert geometry.forward_labels(np.array([[1, 1], [2, 0]], np.uint8)).item() == 1
    assert geometry.forward_labels(np.array([[1, 0], [2, 0]], np.uint8)).item() == 0


def test_padding_and_the_same_size_leave_labels_as_they_are() -> None:
    labels = disks(7, 50, 70, values=4, count=5)
    assert np.array_equal(Geometry("resize", 70, 50).forward_labels(labels), labels)
    padded = Geometry("pad", 96, 64).forward_labels(labels)
    assert padded.shape == (64, 96) and np.array_equal(padded[:50, :70], labels)

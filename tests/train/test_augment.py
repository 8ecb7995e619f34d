"""Batch augmentation keeps images and masks aligned and respects its probabilities."""

from __future__ import annotations

import pytest
import torch

from nerveseg_cli.errors import NervesegError
from nerveseg_cli.train.augment import AugmentConfig, augment_batch, parse_amount


def batch(n: int = 16, h: int = 24, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose value is 0.9 exactly on the mask, 0.1 elsewhere (an off-centre blob)."""
    masks = torch.zeros(n, 1, h, w)
    masks[:, :, 3:10, 4:14] = 1
    return 0.1 + 0.8 * masks, masks


@pytest.mark.parametrize("config", [
    AugmentConfig(hflip=1.0),
    AugmentConfig(hflip=0.5, vflip=0.5),
    AugmentConfig(hflip=0.0, rotate=(25.0, 1.0), scale=(0.2, 1.0)),
])
def test_geometry_moves_images_and_masks_together(config: AugmentConfig) -> None:
    images, masks = batch()
    out_images, out_masks = augment_batch(images, masks, config, torch.Generator().manual_seed(0))
    inside = out_masks > 0.5
    # interpolation blurs only the blob's edge: nearly all mask pixels sit on bright pixels
    assert (out_images[inside] > 0.5).float().mean() > 0.95
    assert (out_images[~inside] < 0.5).float().mean() > 0.95
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_flip_probability_one_flips_everything_and_zero_nothing() -> None:
    images, masks = batch(4)
    flipped, _ = augment_batch(images, masks, AugmentConfig(hflip=1.0),
                               torch.Generator().manual_seed(0))
    assert torch.equal(flipped, images.flip(-1))
    same, _ = augment_batch(images, masks, AugmentConfig(hflip=0.0),
                            torch.Generator().manual_seed(0))
    assert torch.equal(same, images)


def test_photometric_changes_leave_masks_and_range() -> None:
    images, masks = batch()
    config = AugmentConfig(hflip=0.0, brightness=(0.3, 1.0), noise=(0.1, 1.0))
    out_images, out_masks = augment_batch(images, masks, config, torch.Generator().manual_seed(1))
    assert torch.equal(out_masks, masks)
    assert out_images.min() >= 0 and out_images.max() <= 1
    assert not torch.equal(out_images, images)


def test_same_generator_state_same_result() -> None:
    images, masks = batch()
    config = AugmentConfig(hflip=0.5, vflip=0.5, rotate=(10, 0.5), noise=(0.05, 0.5))
    a = augment_batch(images, masks, config, torch.Generator().manual_seed(3))
    b = augment_batch(images, masks, config, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_parse_amount() -> None:
    assert parse_amount("10", "--rotate") == (10.0, 1.0)
    assert parse_amount("10:0.3", "--rotate") == (10.0, 0.3)
    assert parse_amount("0", "--rotate") == (0.0, 0.0)
    for bad in ("x", "1:2", "-1", "1:0.5:3"):
        with pytest.raises(NervesegError):
            parse_amount(bad, "--rotate")


GEOMETRIC = AugmentConfig(hflip=0.5, rotate=(30.0, 1.0), scale=(0.2, 1.0))


def test_two_class_label_maps_move_exactly_as_binary_masks() -> None:
    images, masks = batch()
    _, binary = augment_batch(images, masks, GEOMETRIC, torch.Generator().manual_seed(4))
    _, labels = augment_batch(images, masks, GEOMETRIC, torch.Generator().manual_seed(4),
                              classes=2)
    assert torch.equal(labels, binary)


def test_label_maps_move_each_class_as_its_own_mask_and_keep_their_values() -> None:
    images, _ = batch()
    nerve = torch.zeros(16, 1, 24, 32)
    nerve[:, :, 8:16, 3:9] = 1
    vessel = torch.zeros(16, 1, 24, 32)
    vessel[:, :, 8:16, 22:29] = 1  # 13 pixels from the nerve: no output pixel sees both
    labels = nerve + 3 * vessel  # classes 1 and 3, class 2 absent
    _, moved = augment_batch(images, labels, GEOMETRIC, torch.Generator().manual_seed(5),
                             classes=4)
    assert set(moved.unique().tolist()) <= {0.0, 1.0, 3.0}
    for value, mask in ((1, nerve), (3, vessel)):
        _, alone = augment_batch(images, mask, GEOMETRIC, torch.Generator().manual_seed(5))
        assert torch.equal((moved == value).float(), alone)


def test_background_only_label_maps_stay_background() -> None:
    images, _ = batch(4)
    empty = torch.zeros(4, 1, 24, 32)
    _, moved = augment_batch(images, empty, GEOMETRIC, torch.Generator().manual_seed(6),
                             classes=3)
    assert torch.equal(moved, empty)

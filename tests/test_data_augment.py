"""Per-category normal-image augmentation (docs/design.md §7)."""

from __future__ import annotations

import torch

from pfadseg.data.augment import (
    FILL_GREY,
    NormalAugmentation,
    augmentation_for_category,
)


def test_category_table() -> None:
    for name in ("bottle", "carpet", "grid", "hazelnut", "leather", "screw", "tile"):
        assert augmentation_for_category(name) == NormalAugmentation(rotate90=True, max_degrees=5.0)
    for name in ("cable", "wood", "zipper"):
        assert augmentation_for_category(name) == NormalAugmentation(rotate90=False, max_degrees=5.0)
    for name in ("capsule", "metal_nut", "pill", "toothbrush", "transistor", "magnetic_tile", "fabric", None):
        assert not augmentation_for_category(name).enabled


def test_none_is_identity() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert augmentation_for_category("pill")(x, torch.Generator().manual_seed(0)) is x


def test_quarter_turns_are_exact_rotations() -> None:
    x = torch.rand(16, 3, 12, 12)
    out = NormalAugmentation(rotate90=True, max_degrees=0.0)(x, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(16):
        matches = [k for k in range(4) if torch.allclose(out[i], torch.rot90(x[i], k, (1, 2)), atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1


def test_small_rotation_fills_grey_and_is_reproducible() -> None:
    x = torch.zeros(8, 3, 64, 64)
    aug = NormalAugmentation(rotate90=False, max_degrees=5.0)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    angles = aug.angles(1000, torch.Generator().manual_seed(0))
    assert angles.abs().max() <= 5.0 and angles.abs().max() > 4.5
    corner = a[:, :, 0, 0]
    assert ((corner - FILL_GREY).abs() < 1e-5).any()
    assert a.max() <= FILL_GREY + 1e-5 and a[:, :, 32, 32].abs().max() < 1e-6


def test_brightness_scales_each_image_within_the_range_and_clips() -> None:
    x = torch.full((400, 3, 4, 4), 0.5)
    x[:, :, 0, 0] = 0.9  # brightened past 1 by factors above 1.11: must be clipped
    aug = NormalAugmentation(brightness=0.3)
    out = aug(x, torch.Generator().manual_seed(1))
    factors = out[:, 0, 1, 1] / 0.5
    assert torch.allclose(out[:, :, 1:, 1:], 0.5 * factors.reshape(-1, 1, 1, 1).expand(-1, 3, 3, 3))  # one factor per image
    assert factors.min() >= 0.7 - 1e-6 and factors.max() <= 1.3 + 1e-6
    assert factors.min() < 0.75 and factors.max() > 1.25 and factors.std() > 0.1
    assert out.max() <= 1.0 and (out[:, 0, 0, 0] == 1.0).any()
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(1)))


def test_brightness_after_rotation_and_off_by_default() -> None:
    x = torch.rand(4, 3, 8, 8) * 0.5  # no clipping
    assert augmentation_for_category("bottle").brightness == 0.0
    rotated = NormalAugmentation(rotate90=True)(x, torch.Generator().manual_seed(2))
    both = NormalAugmentation(rotate90=True, brightness=0.2)(x, torch.Generator().manual_seed(2))
    ratio = both / rotated.clamp_min(1e-6)
    assert not torch.allclose(both, rotated) and torch.allclose(ratio[0], ratio[0, 0, 0, 0].expand_as(ratio[0]), atol=1e-4)

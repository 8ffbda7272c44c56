"""DRAEM's texture augmentation operations (optional synthesis flag)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pfadseg.data import texture_augment as ta


def _image(seed: int = 0, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 24, 20), generator=g).float() / 255.0


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x * 255).round().byte().permute(1, 2, 0).numpy())


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0


def test_equalize_matches_pil() -> None:
    x = _image() ** 2  # a skewed histogram
    out = ta.equalize(x, None)
    for i in range(x.shape[0]):
        assert torch.equal(out[i], _tensor(ImageOps.equalize(_pil(x[i]))))


def test_posterize_matches_pil() -> None:
    x = _image(1, n=16)
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(1, 9, (16,), generator=torch.Generator().manual_seed(0))
    out = ta.posterize(x, g)
    for i in range(16):
        assert torch.equal(out[i], _tensor(ImageOps.posterize(_pil(x[i]), int(bits[i]))))


def test_hsv_round_trip() -> None:
    x = _image(2)
    assert torch.allclose(ta.hsv_to_rgb(ta.rgb_to_hsv(x)), x, atol=1e-5)


@pytest.mark.parametrize("name,op", ta.OPERATIONS)
def test_each_operation_stays_in_range(name: str, op) -> None:
    x = _image(3, n=8)
    out = op(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0, name
    if name != "solarize":  # solarize leaves about half of the images alone
        assert not torch.equal(out, x), name


def test_random_augment_uses_three_distinct_operations() -> None:
    x = _image(4, n=32)
    a = ta.random_augment(x, torch.Generator().manual_seed(1))
    b = ta.random_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_autocontrast_matches_pil() -> None:
    x = _image(5, n=12) * 0.6 + 0.2  # a narrow range to stretch
    cutoffs = torch.randint(0, 21, (12,), generator=torch.Generator().manual_seed(0))
    out = ta.autocontrast(x, torch.Generator().manual_seed(0))
    for i in range(12):
        expected = _tensor(ImageOps.autocontrast(_pil(x[i]), cutoff=int(cutoffs[i])))
        assert torch.equal(out[i], expected), int(cutoffs[i])

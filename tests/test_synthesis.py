"""Anomaly synthesis: faithfulness to DRAEM, statistics, reproducibility, sizes, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pfadseg.data.geometry import rotate
from pfadseg.data.synthesis import (
    AnomalySynthesizer,
    SynthesisConfig,
    estimate_foreground,
    perlin_noise,
)
from pfadseg.data.textures import procedural_textures


def _draem_perlin(shape: tuple[int, int], res: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """DRAEM's ``rand_perlin_2d_np`` with the gradient angles passed in instead of drawn."""
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : delta[0], 0 : res[1] : delta[1]].transpose(1, 2, 0) % 1
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile_grads(s1, s2):
        return np.repeat(np.repeat(gradients[s1[0] : s1[1], s2[0] : s2[1]], d[0], axis=0), d[1], axis=1)

    def dot(grad, shift):
        g = np.stack((grid[: shape[0], : shape[1], 0] + shift[0], grid[: shape[0], : shape[1], 1] + shift[1]), -1)
        return (g * grad[: shape[0], : shape[1]]).sum(axis=-1)

    n00 = dot(tile_grads([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile_grads([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile_grads([0, -1], [1, None]), [0, -1])
    n11 = dot(tile_grads([1, None], [1, None]), [-1, -1])
    t = fade(grid[: shape[0], : shape[1]])
    lerp = lambda a, b, w: (b - a) * w + a  # noqa: E731
    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


@pytest.fixture(scope="module")
def textures() -> torch.Tensor:
    return procedural_textures(16, 64, seed=3)


@pytest.mark.parametrize("res", [(1, 1), (4, 8), (32, 2), (16, 16)])
def test_perlin_matches_draem_reference(res: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 2 * np.pi, (33, 33))
    ref = _draem_perlin((256, 256), res, angles[: res[0] + 1, : res[1] + 1])
    ours = perlin_noise(256, 256, torch.tensor([res]), torch.from_numpy(angles)[None], torch.float64)[0]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-9)


def test_perlin_any_size_is_a_crop_of_the_padded_size() -> None:
    rng = np.random.default_rng(1)
    angles = rng.uniform(0, 2 * np.pi, (33, 33))
    res = (8, 32)
    padded = _draem_perlin((256, 192), res, angles[:9, :33])  # next multiples of 8 and 32
    ours = perlin_noise(250, 190, torch.tensor([res]), torch.from_numpy(angles)[None], torch.float64)[0]
    np.testing.assert_allclose(ours.numpy(), padded[:250, :190], atol=1e-9)


def test_rotation_direction_and_exact_quarter_turn() -> None:
    x = torch.rand(2, 3, 16, 16)
    out = rotate(x, torch.tensor([90.0, -90.0]))
    assert torch.allclose(out[0], torch.rot90(x[0], 1, (1, 2)), atol=1e-5)  # counter-clockwise
    assert torch.allclose(out[1], torch.rot90(x[1], -1, (1, 2)), atol=1e-5)


def test_mask_statistics_match_the_paper_setting() -> None:
    """2000 draws at 256x256: mean area ~4.9 %, ~4-5 % empty masks, texture weight in (0.2, 1]."""
    synth = AnomalySynthesizer(torch.full((4, 3, 8, 8), 255, dtype=torch.uint8))
    g = torch.Generator().manual_seed(0)
    image = torch.full((250, 3, 256, 256), 0.2)
    areas, weights = [], []
    for _ in range(8):
        r = synth.synthesize(image, g)
        areas.append(r.masks.flatten(1).mean(1))
        inside = r.masks[:, 0] > 0
        # texture 1.0 over image 0.2: value = 0.2 + (1 - beta) * 0.8 inside the mask
        value = (r.images[:, 0] * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
        recovered = (value - 0.2) / 0.8
        has = inside.flatten(1).any(1)
        assert torch.allclose(recovered[has], 1.0 - r.beta[has], atol=1e-5)
        assert torch.equal(r.images[:, :, ~inside.any(0)], image[:, :, ~inside.any(0)])
        weights.append(recovered[has])
    area = torch.cat(areas)
    w = torch.cat(weights)
    mean_area, empty = area.mean().item(), (area == 0).float().mean().item()
    print(f"\nsynthesis over 2000 draws: mean area {100 * mean_area:.2f} %, empty masks {100 * empty:.2f} %")
    assert 0.040 <= mean_area <= 0.058
    assert 0.025 <= empty <= 0.07
    assert w.min() > 0.2 and w.max() <= 1.0


def test_same_seed_same_batch_different_seed_different(textures: torch.Tensor) -> None:
    synth = AnomalySynthesizer(textures)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    a = synth(x, torch.Generator().manual_seed(1))
    b = synth(x, torch.Generator().manual_seed(1))
    c = synth(x, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_any_size_and_output_contract(textures: torch.Tensor) -> None:
    synth = AnomalySynthesizer(textures)
    x = torch.rand(3, 3, 250, 190)
    aug, masks = synth(x, torch.Generator().manual_seed(0))
    assert aug.shape == (3, 3, 250, 190) and masks.shape == (3, 1, 250, 190)
    assert aug.dtype == x.dtype and masks.dtype == x.dtype
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert aug.min() >= 0 and aug.max() <= 1
    outside = (masks == 0).expand_as(x)
    assert torch.equal(aug[outside], x[outside])


def test_anomaly_probability_zero_leaves_images(textures: torch.Tensor) -> None:
    synth = AnomalySynthesizer(textures, SynthesisConfig(anomaly_probability=0.0))
    x = torch.rand(4, 3, 32, 32)
    aug, masks = synth(x, torch.Generator().manual_seed(0))
    assert torch.equal(aug, x) and not masks.any()


def test_foreground_only_keeps_masks_on_the_object(textures: torch.Tensor) -> None:
    x = torch.full((32, 3, 128, 128), 0.5)
    x[:, :, 32:96, 32:96] = 0.9  # a bright square object on a grey background
    fg = estimate_foreground(x, SynthesisConfig())
    assert fg[:, :, 40:88, 40:88].all() and not fg[:, :, :20].any()
    synth = AnomalySynthesizer(textures, SynthesisConfig(foreground_only=True))
    _, masks = synth(x, torch.Generator().manual_seed(0))
    assert masks.any()
    assert not (masks.bool() & ~fg).any()
    texture_like = torch.rand(2, 3, 64, 64)  # no uniform background: everything is foreground
    assert estimate_foreground(texture_like, SynthesisConfig()).all()


def test_grey_on_grey_pastes_grey_anomalies_on_grey_images_only(textures: torch.Tensor) -> None:
    grey = torch.rand(8, 1, 64, 64).expand(8, 3, 64, 64).contiguous()
    colour = torch.rand(8, 3, 64, 64)
    synth = AnomalySynthesizer(textures, SynthesisConfig(grey_on_grey=True))
    plain = AnomalySynthesizer(textures)
    grey_aug, masks = synth(grey, torch.Generator().manual_seed(1))
    assert masks.any()
    assert (grey_aug.amax(dim=1) - grey_aug.amin(dim=1)).max() < 1e-6  # still grey where the anomaly is
    plain_aug, plain_masks = plain(grey, torch.Generator().manual_seed(1))
    assert torch.equal(plain_masks, masks)
    assert (plain_aug.amax(dim=1) - plain_aug.amin(dim=1)).max() > 0.05  # DeSTSeg's synthesis colours them
    # The luminance of the coloured anomaly: same masks and blend, the texture's luma instead of its colour.
    luma = (plain_aug * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(dim=1)
    assert torch.allclose(grey_aug[:, 0], luma, atol=1e-5)
    assert torch.equal(synth(colour, torch.Generator().manual_seed(1))[0], plain(colour, torch.Generator().manual_seed(1))[0])


def test_texture_augmentation_runs_and_is_reproducible(textures: torch.Tensor) -> None:
    synth = AnomalySynthesizer(textures, SynthesisConfig(texture_augmentation=True))
    x = torch.rand(12, 3, 64, 64)
    a = synth(x, torch.Generator().manual_seed(5))
    b = synth(x, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0])
    assert torch.isfinite(a[0]).all() and a[0].min() >= 0 and a[0].max() <= 1
    plain = AnomalySynthesizer(textures)(x, torch.Generator().manual_seed(5))
    assert torch.equal(plain[1], a[1])  # same masks: augmentation draws come after


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SynthesisConfig(beta_min=0.9, beta_max=0.8)
    with pytest.raises(ValueError):
        SynthesisConfig(perlin_scale_min=6, perlin_scale_max=6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(textures: torch.Tensor) -> None:
    synth = AnomalySynthesizer(textures)
    x = torch.rand(4, 3, 64, 64)
    cpu = synth(x, torch.Generator().manual_seed(0))
    gpu = synth(x.cuda(), torch.Generator().manual_seed(0))
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-4)
    assert (cpu[1] != gpu[1].cpu()).float().mean() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_float_dtypes(textures: torch.Tensor, dtype: torch.dtype) -> None:
    synth = AnomalySynthesizer(textures)
    aug, masks = synth(torch.rand(2, 3, 48, 48).to(dtype), torch.Generator().manual_seed(0))
    assert aug.dtype == dtype and masks.dtype == dtype

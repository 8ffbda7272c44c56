"""The two training losses (SPEC section 6), as in the official DeSTSeg code."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_loss(distance_maps: list[torch.Tensor]) -> torch.Tensor:
    """Stage 1: per-level (1 − cos) maps averaged over the grid, summed over the batch and the levels."""
    return sum(m.float().mean(dim=(2, 3)).sum() for m in distance_maps)  # type: ignore[return-value]


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The synthetic mask at the prediction's size: bilinear resize, then threshold at 0.5."""
    return (F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False) >= 0.5).float()


def focal_loss(p: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss on probabilities (no α), mean over pixels."""
    p = p.float().clamp(1e-6, 1 - 1e-6)
    ce = F.binary_cross_entropy(p, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


def segmentation_loss(p: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Stage 2: focal (γ = 4) + L1, weights 1 : 1, against the mask resized to p's size."""
    target = downsample_mask(mask, p.shape[-2:])
    return focal_loss(p, target, gamma) + (p.float() - target).abs().mean()

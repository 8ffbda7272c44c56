"""The two training losses (docs/design.md §6), as in the official DeSTSeg code."""

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
    """Binary focal loss on probabilities (no α), mean over pixels: the official DeSTSeg loss.

    The cross-entropy is ``F.binary_cross_entropy``'s, in value and gradient (log clamped at −100, no
    clamp on p). NaN probabilities (a diverged network) give a NaN loss for the trainer to report,
    where ``F.binary_cross_entropy`` itself would raise.
    """
    p, target = p.float(), target.float()
    # BCE raises on NaN; NaN pixels still reach the loss through the focal factor.
    ce = F.binary_cross_entropy(torch.where(torch.isnan(p), 0.5, p), target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Stage 2: focal (γ = 4) + L1 on the probability, weights 1 : 1, against the mask resized to the output's size."""
    with torch.autocast(logits.device.type, enabled=False):  # float32; CUDA autocast refuses binary_cross_entropy
        target = downsample_mask(mask, logits.shape[-2:])
        p = torch.sigmoid(logits.float())
        return focal_loss(p, target, gamma) + (p - target).abs().mean()

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


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss (no α), mean over pixels, computed from the logits.

    The value is the official code's (focal loss on ``sigmoid(logits)`` clamped to [1e-6, 1 − 1e-6])
    wherever that clamp is inactive. Where the sigmoid saturates, the clamp's gradient is zero: a
    network whose logits all fall below −14 early in stage 2 (measured: −60…−600 at lr 0.4) could
    never come back, and its map stayed constant. In log space the wrongly saturated pixels keep a
    gradient of about 1.
    """
    z = logits.float()
    log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)
    ce = -(target * log_p + (1 - target) * log_not_p)
    p_t = torch.exp(torch.where(target > 0.5, log_p, log_not_p))
    return (ce * (1 - p_t) ** gamma).mean()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Stage 2: focal (γ = 4) + L1 on the probability, weights 1 : 1, against the mask resized to the output's size."""
    target = downsample_mask(mask, logits.shape[-2:])
    return focal_loss(logits, target, gamma) + (torch.sigmoid(logits.float()) - target).abs().mean()

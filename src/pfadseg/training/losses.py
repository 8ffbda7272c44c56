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
    """Binary focal loss on probabilities (no α), mean over pixels, as in the official code.

    The cross-entropy is written out: ``F.binary_cross_entropy`` raises on NaN, whereas a NaN loss
    reaches the trainer, which stops with a clear "training diverged" error.
    """
    p = p.float().clamp(1e-6, 1 - 1e-6)
    ce = -(target * p.log() + (1 - target) * (1 - p).log())
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


def focal_loss_from_logits(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """The same focal loss computed in log space from the logits (``train.loss_from_logits``).

    Equal to :func:`focal_loss` of ``sigmoid(logits)`` wherever its clamp is inactive. Where the
    sigmoid saturates, the clamp's gradient is zero: a network whose logits all fall below −14 early
    in stage 2 (measured: −60…−600 at lr 0.4) never comes back. In log space the wrongly saturated
    pixels keep a gradient of about 1 (docs/benchmarks.md: it rescued such a run).
    """
    z = logits.float()
    log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)
    ce = -(target * log_p + (1 - target) * log_not_p)
    p_t = torch.exp(torch.where(target > 0.5, log_p, log_not_p))
    return (ce * (1 - p_t) ** gamma).mean()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 4.0, from_logits: bool = False) -> torch.Tensor:
    """Stage 2: focal (γ = 4) + L1 on the probability, weights 1 : 1, against the mask resized to the output's size.

    ``from_logits``: the focal term in log space (keeps a gradient where the sigmoid saturates).
    """
    target = downsample_mask(mask, logits.shape[-2:])
    p = torch.sigmoid(logits.float())
    focal = focal_loss_from_logits(logits, target, gamma) if from_logits else focal_loss(p, target, gamma)
    return focal + (p - target).abs().mean()

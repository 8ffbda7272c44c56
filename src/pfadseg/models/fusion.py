"""Fusion of the segmentation map with the memory bank's distance map into one map and one score.

The two maps live on different scales (a probability, a feature distance). Each is put on a
common scale with statistics of normal images held out of training, never of test images, and
the standardised maps are combined pixel by pixel. docs/design.md §14 lists the rules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FUSION_RULES: tuple[str, ...] = ("mean", "max")


class MapFusion(nn.Module):
    """Standardise each map by its held-out normal pixels' mean and standard deviation, then combine them."""

    def __init__(self, rule: str = "mean") -> None:
        super().__init__()
        if rule not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {rule!r}: expected one of {', '.join(FUSION_RULES)}")
        self.rule = rule
        self.register_buffer("mean", torch.zeros(2))  # segmentation, distance
        self.register_buffer("std", torch.ones(2))

    def fit(self, segmentation: Tensor, distance: Tensor) -> None:
        """Statistics of the held-out normal images' maps (any shapes): one mean and one standard deviation per map."""
        stats = [(m.double().mean(), m.double().std().clamp_min(1e-12)) for m in (segmentation, distance)]
        self.mean = torch.tensor([s[0] for s in stats], dtype=torch.float32, device=self.mean.device)
        self.std = torch.tensor([s[1] for s in stats], dtype=torch.float32, device=self.std.device)

    def forward(self, segmentation: Tensor, distance: Tensor) -> Tensor:
        z_seg = (segmentation.float() - self.mean[0]) / self.std[0]
        z_dist = (distance.float() - self.mean[1]) / self.std[1]
        return (z_seg + z_dist) / 2 if self.rule == "mean" else torch.maximum(z_seg, z_dist)

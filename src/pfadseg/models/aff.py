"""AFF: attentional feature fusion (Dai et al., WACV 2021), used on every residual connection."""

from __future__ import annotations

import torch
from torch import nn

from pfadseg.models.layers import GlobalAvgPool


def _channel_mlp(channels: int, reduction: int) -> list[nn.Module]:
    """1×1 conv (C→C/r) → BN → ReLU → 1×1 conv (C/r→C) → BN, as in the official open-aff code."""
    hidden = max(1, channels // reduction)
    return [
        nn.Conv2d(channels, hidden, 1),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
        nn.BatchNorm2d(channels),
    ]


class AFF(nn.Module):
    """Fuse a residual branch ``y`` and an identity ``z`` with a learned per-pixel, per-channel weight.

    ``w = sigmoid(L(y + z) + G(y + z))`` with a local (full-resolution) and a global (pooled)
    channel MLP; output ``factor·y·w + factor·z·(1 − w)``. With ``factor = 2`` (official code)
    AFF equals the plain sum ``y + z`` when ``w = ½``.
    """

    def __init__(self, channels: int, reduction: int = 4, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor
        self.local_att = nn.Sequential(*_channel_mlp(channels, reduction))
        self.global_att = nn.Sequential(GlobalAvgPool(), *_channel_mlp(channels, reduction))

    def weight(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s = y + z
        return torch.sigmoid(self.local_att(s) + self.global_att(s))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # y·w + z·(1 − w) = lerp(z, y, w): one fused element-wise pass instead of four.
        return self.factor * torch.lerp(z, y, self.weight(y, z))

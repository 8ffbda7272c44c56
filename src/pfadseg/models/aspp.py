"""ASPP head of the DeSTSeg baseline: image pooling + dilated 3×3 branches, fused by a 3×3 conv."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pfadseg.models.layers import GlobalAvgPool, conv_bn_relu


class ASPPPooling(nn.Module):
    """Global average pool → 1×1 conv + BN + ReLU, broadcast back to the input size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pool = GlobalAvgPool()
        self.conv = conv_bn_relu(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling exactly as the official DeSTSeg network has it (no 1×1 branch)."""

    def __init__(self, channels: int, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([*(conv_bn_relu(channels, channels, 3, r) for r in rates), ASPPPooling(channels, channels)])
        self.project = conv_bn_relu(len(self.branches) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))

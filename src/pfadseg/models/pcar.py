"""PCAR (this paper) and the SPR channel attention it uses (Yu et al. 2024, MSPANet)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pfadseg.models.layers import average_pools


class SPR(nn.Module):
    """Structural-prior channel attention: pooled 1×1 and 2×2 statistics → MLP → sigmoid weights.

    Returns a (N, C, 1, 1) tensor of channel weights in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(5 * channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pooled = torch.cat([p.reshape(n, -1, 1, 1) for p in average_pools(x, (1, 2))], dim=1)
        return torch.sigmoid(self.fc2(self.relu(self.fc1(pooled))))


class PCAR(nn.Module):
    """Parallel dilated 3×3 convs whose outputs are mixed per channel by split attention.

    Each branch (conv + BN) is scored by one shared SPR; a softmax across branches turns the
    scores into per-channel weights that sum to 1; the output is the weighted branch sum (C channels).
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[int] = (3, 3, 3),
        dilations: Sequence[int] = (1, 2, 3),
        spr_reduction: int = 16,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) != len(dilations):
            raise ValueError(f"PCAR needs one dilation per kernel size, got {kernel_sizes} and {dilations}")
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, k, padding=d * (k - 1) // 2, dilation=d, bias=False),
                nn.BatchNorm2d(channels),
            )
            for k, d in zip(kernel_sizes, dilations)
        )
        self.spr = SPR(channels, spr_reduction)

    def branch_weights(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """B branch outputs (N, C, H, W) → (B, N, C, 1, 1) weights, softmax over the B branches."""
        return torch.softmax(torch.stack([self.spr(f) for f in feats]), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The branches are weighted one by one rather than stacked into one (N, B, C, H, W) tensor:
        # that copy and its reduction cost as much as a convolution on a CPU.
        feats = [branch(x) for branch in self.branches]
        weights = self.branch_weights(feats)
        out = feats[0] * weights[0]
        for f, w in zip(feats[1:], weights[1:]):
            out = torch.addcmul(out, f, w)
        return out

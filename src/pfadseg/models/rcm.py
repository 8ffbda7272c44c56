"""RCM: rectangular self-calibration module (Ni et al. 2024, CGRSeg), the PFADSeg head's attention."""

from __future__ import annotations

import torch
from torch import nn


class RCA(nn.Module):
    """Rectangular calibration attention: a map built from row and column means gates a depthwise 3×3 conv."""

    def __init__(self, channels: int, band_kernel: int = 11, square_kernel: int = 3) -> None:
        super().__init__()
        self.local = nn.Conv2d(channels, channels, square_kernel, padding=square_kernel // 2, groups=channels)
        self.excite = nn.Sequential(
            nn.Conv2d(channels, channels, (1, band_kernel), padding=(0, band_kernel // 2), groups=channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, (band_kernel, 1), padding=(band_kernel // 2, 0), groups=channels),
            nn.Sigmoid(),
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        # Mean over the width (N,C,H,1) plus mean over the height (N,C,1,W), broadcast to (N,C,H,W).
        return self.excite(x.mean(dim=3, keepdim=True) + x.mean(dim=2, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x) * self.local(x)


class RCM(nn.Module):
    """RCA → BN → MLP (C→2C→C, GELU) → per-channel layer scale → residual add.

    With a tiny layer scale (CGRSeg uses 1e-6) the module starts as the identity.
    """

    def __init__(self, channels: int, layer_scale: float = 1e-6, band_kernel: int = 11, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.token_mixer = RCA(channels, band_kernel)
        self.norm = nn.BatchNorm2d(channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        return torch.addcmul(x, y, self.gamma.reshape(1, -1, 1, 1))

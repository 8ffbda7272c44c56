"""The PA residual block (docs/design.md §4) and the layers of blocks built from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pfadseg.models.aff import AFF
from pfadseg.models.pcar import PCAR


@dataclass(frozen=True)
class BlockConfig:
    """Switches of the PA block; ``aff=False, pcar=False`` is the plain ResNet BasicBlock of DeSTSeg."""

    aff: bool = True
    aff_factor: float = 2.0
    aff_reduction: int = 4
    pcar: bool = True
    pcar_kernel_sizes: tuple[int, ...] = (3, 3, 3)
    pcar_dilations: tuple[int, ...] = (1, 2, 3)
    spr_reduction: int = 16


class PABlock(nn.Module):
    """conv3×3(stride) → BN → ReLU → PCAR (or conv3×3) → BN, fused with the identity by AFF (or a sum) → ReLU.

    ``final_relu = False`` (set by :func:`pa_layer`) leaves the output linear: a student block that must
    imitate signed teacher features.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, config: BlockConfig = BlockConfig()) -> None:
        super().__init__()
        self.final_relu = True
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if config.pcar:
            self.conv2: nn.Module = PCAR(cout, config.pcar_kernel_sizes, config.pcar_dilations, config.spr_reduction)
        else:
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.fuse: AFF | None = AFF(cout, config.aff_reduction, config.aff_factor) if config.aff else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = y + identity if self.fuse is None else self.fuse(y, identity)
        return self.relu(out) if self.final_relu else out


def pa_layer(cin: int, cout: int, blocks: int, stride: int, config: BlockConfig, final_relu: bool = True) -> nn.Sequential:
    """``blocks`` PA blocks; the first one changes channels/stride (1×1 projection on its identity).

    ``final_relu``: whether the layer's last block ends with a ReLU (see :class:`PABlock`).
    """
    layer = [PABlock(cin, cout, stride, config)] + [PABlock(cout, cout, 1, config) for _ in range(blocks - 1)]
    layer[-1].final_relu = final_relu
    return nn.Sequential(*layer)

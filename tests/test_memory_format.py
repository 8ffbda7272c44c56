"""bf16 + channels_last training on CPU: the parts the backend gets wrong or slow train contiguous; layouts survive a resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pfadseg.config import merge, preset_config
from pfadseg.models import ModelConfig, build_model
from pfadseg.models.layers import average_pools
from pfadseg.models.pcar import PCAR
from pfadseg.training.memory_formats import contiguous_islands, keep_contiguous
from pfadseg.training.runtime import Precision

CPU = torch.device("cpu")
BF16_CL = Precision(torch.bfloat16, True)


def _pcar_weight_gradients(precision: Precision, islands: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    pcar = PCAR(24).train().to(memory_format=precision.memory_format())  # 24 channels: the Lite0 student's 1/4 width
    if islands:
        keep_contiguous(contiguous_islands(pcar, precision, CPU).values())
    x = torch.randn(8, 24, 32, 32).contiguous(memory_format=precision.memory_format())
    with precision.autocast(CPU):
        y = pcar(x)
    y.float().square().mean().backward()
    return {f"dilation {d}": pcar.branches[i][0].weight.grad for i, d in enumerate((1, 2, 3))}


def test_dilated_odd_width_convs_train_contiguous_with_the_gradients_of_fp32():
    reference = _pcar_weight_gradients(Precision(None, False), islands=False)
    for name, grad in _pcar_weight_gradients(BF16_CL, islands=True).items():
        assert torch.isfinite(grad).all(), name
        assert (grad - reference[name]).abs().max() <= 0.05 * reference[name].abs().max(), name


def test_the_islands_are_the_largest_modules_with_odd_widths():
    # Branch 0's undilated conv and SPR (no BN) stay channels_last; a ModuleList is never called, so its items are the islands.
    assert list(contiguous_islands(PCAR(24), BF16_CL, CPU)) == ["branches.0.1", "branches.1", "branches.2"]
    assert contiguous_islands(PCAR(32), BF16_CL, CPU) == {}  # a multiple of 16: exact and fast in channels_last
    assert contiguous_islands(PCAR(24), Precision(None, True), CPU) == {}  # fp32 is exact
    assert contiguous_islands(PCAR(24), Precision(torch.bfloat16, False), CPU) == {}  # all contiguous anyway
    model = build_model(ModelConfig(teacher="efficientnet_lite0"), pretrained=False)
    # Decoder widths 112 (its AFF has a 28-channel BN), 40 and 24; the encoder and decoder.layer4 are multiples of 16.
    assert list(contiguous_islands(model.student, BF16_CL, CPU)) == ["decoder.layer3", "decoder.layer2", "decoder.layer1"]
    assert contiguous_islands(model.segmentation, BF16_CL, CPU) == {}


def test_island_hooks_act_while_training_and_come_off():
    conv = torch.nn.Conv2d(3, 3, 3, dilation=2)
    (handle,) = keep_contiguous([conv])
    seen: list[bool] = []
    conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))  # runs after keep_contiguous's
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    conv.train()(x)
    conv.eval()(x)
    handle.remove()
    conv.train()(x)
    assert seen == [True, False, False]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [(8, 12), (7, 9)])  # exact 2×2 tiles, and PyTorch's overlapping bins
def test_average_pools_match_pytorch_in_values_gradients_and_layout(memory_format, size):
    x = torch.randn(3, 5, *size, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    weights = [torch.randn(3, 5, s, s, dtype=torch.float64) for s in (1, 2)]
    ours = average_pools(x, (1, 2))
    theirs = [F.adaptive_avg_pool2d(x, s) for s in (1, 2)]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    grad = torch.autograd.grad(sum((p * w).sum() for p, w in zip(ours, weights)), x)[0]
    expected = torch.autograd.grad(sum((p * w).sum() for p, w in zip(theirs, weights)), x)[0]
    torch.testing.assert_close(grad, expected)
    assert grad.is_contiguous(memory_format=memory_format)


def test_resumed_momentum_keeps_each_parameters_memory_format(tiny_trainer):
    config = merge(preset_config("pfadseg", "debug"), {"model": {"teacher": "efficientnet_lite0"}, "train": {"batch_size": 2}})
    first = tiny_trainer(config, BF16_CL)
    first.student_step()
    first.save_checkpoint()
    resumed = tiny_trainer(config, BF16_CL)
    resumed.load_checkpoint()
    params = list(resumed.model.student.parameters())
    assert any(p.dim() == 4 and not p.is_contiguous() for p in params)  # channels_last outside the islands
    for p in params:
        assert resumed.optimizers.student.state[p]["momentum_buffer"].stride() == p.stride()

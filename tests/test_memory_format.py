"""bf16 + channels_last training on CPU: networks the backend gets wrong gradients for train contiguous."""

from __future__ import annotations

import torch

from pfadseg.models import ModelConfig, build_model
from pfadseg.models.pcar import PCAR
from pfadseg.training.runtime import Precision, training_precision

CPU = torch.device("cpu")
BF16_CL = Precision(torch.bfloat16, True)


def _pcar_weight_gradients(precision: Precision) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    pcar = PCAR(24).train().to(memory_format=precision.memory_format())  # 24 channels: the Lite0 student's 1/4 width
    x = torch.randn(8, 24, 32, 32).contiguous(memory_format=precision.memory_format())
    with precision.autocast(CPU):
        y = pcar(x)
    y.float().square().mean().backward()
    return {f"dilation {d}": pcar.branches[i][0].weight.grad for i, d in enumerate((1, 2, 3))}


def test_dilated_odd_width_convs_train_contiguous_with_the_gradients_of_fp32():
    precision = training_precision(BF16_CL, PCAR(24), CPU)
    assert precision == Precision(torch.bfloat16, False)
    reference = _pcar_weight_gradients(Precision(None, False))
    for name, grad in _pcar_weight_gradients(precision).items():
        assert torch.isfinite(grad).all(), name
        assert (grad - reference[name]).abs().max() <= 0.05 * reference[name].abs().max(), name


def test_only_the_nets_with_such_convs_lose_channels_last():
    assert training_precision(BF16_CL, PCAR(32), CPU) == BF16_CL  # a multiple of 16: exact in channels_last
    assert training_precision(Precision(None, True), PCAR(24), CPU) == Precision(None, True)  # fp32 is exact
    model = build_model(ModelConfig(teacher="efficientnet_lite0"), pretrained=False)
    assert not training_precision(BF16_CL, model.student, CPU).channels_last  # decoder widths 24 and 40
    assert training_precision(BF16_CL, model.segmentation, CPU) == BF16_CL

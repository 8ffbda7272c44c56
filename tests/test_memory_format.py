"""bf16 + channels_last training on CPU: the convs the backend gets wrong train contiguous, the rest stays channels_last."""

from __future__ import annotations

import torch

from pfadseg.models.pcar import PCAR
from pfadseg.training.runtime import Precision, guard_channels_last_training, memory_format_name, unsafe_channels_last_convs

CPU = torch.device("cpu")
BF16_CL = Precision(torch.bfloat16, True)


def _pcar_gradients(precision: Precision, guard: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    pcar = PCAR(24).train().to(memory_format=precision.memory_format())  # 24 channels: the Lite0 student's 1/4 width
    x = torch.randn(8, 24, 32, 32).contiguous(memory_format=precision.memory_format())
    if guard:
        guard_channels_last_training(pcar, precision, CPU)
    with precision.autocast(CPU):
        y = pcar(x)
    y.float().square().mean().backward()
    return y, {name: p.grad for name, p in pcar.named_parameters()}


def test_only_dilated_convs_with_odd_widths_are_guarded_and_only_in_bf16_channels_last():
    assert len(unsafe_channels_last_convs(PCAR(24), BF16_CL, CPU)) == 2  # dilations 2 and 3; dilation 1 is exact
    assert unsafe_channels_last_convs(PCAR(32), BF16_CL, CPU) == []
    assert unsafe_channels_last_convs(PCAR(24), Precision(torch.bfloat16, False), CPU) == []
    assert unsafe_channels_last_convs(PCAR(24), Precision(None, True), CPU) == []


def test_guarded_pcar_trains_channels_last_with_the_gradients_of_fp32():
    _, reference = _pcar_gradients(Precision(None, False), guard=False)
    y, grads = _pcar_gradients(BF16_CL, guard=True)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the guarded convs hand channels_last back
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    for name in ("branches.0.0.weight", "branches.1.0.weight", "branches.2.0.weight"):  # dilations 1, 2, 3
        scale = reference[name].abs().max()
        assert (grads[name] - reference[name]).abs().max() <= 0.05 * scale, name


def test_the_training_format_is_named_with_its_contiguous_convs():
    from pfadseg.models import ModelConfig, build_model

    student = build_model(ModelConfig(teacher="efficientnet_lite0"), pretrained=False).student
    # The decoder's 40- and 24-channel layers: 2 blocks each, PCAR dilations 2 and 3 in each block.
    assert memory_format_name(BF16_CL, student, CPU) == "channels_last (8 dilated convs contiguous)"
    assert memory_format_name(Precision(None, True), student, CPU) == "channels_last"
    assert memory_format_name(Precision(torch.bfloat16, False), student, CPU) == "contiguous"

"""Model summary for ``pfadseg info``: parameters per part, feature shapes and multiply–accumulates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pfadseg.models.pfadseg import PFADSeg, segmentation_input


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, run: Any) -> int:
    """Multiply–accumulates of the convolutions and linear layers executed by ``run()``.

    Counts weight layers only (convs: output elements × input channels per group × kernel area);
    normalisation, activations, pooling and interpolation are a few percent at most.
    """
    total = 0

    def hook(layer: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += output.numel() * (layer.in_channels // layer.groups) * kh * kw
        else:
            total += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


def summarize(model: PFADSeg, image_size: int = 256) -> dict[str, Any]:
    """Parameters (teacher as used, student, segmentation net), shapes and MACs for one image."""
    model.eval()
    x = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad():
        t_feats, s_feats = model.features(x)
        seg_input = segmentation_input(t_feats, s_feats)
        out = model.segmentation(seg_input)
    shape = lambda t: list(t.shape[1:])  # noqa: E731 - drop the batch dimension
    macs = {
        "teacher": count_macs(model.teacher, lambda: model.teacher(x)),
        "student": count_macs(model.student, lambda: model.student(x)),
        "segmentation": count_macs(model.segmentation, lambda: model.segmentation(seg_input)),
    }
    return {
        "teacher": model.config.teacher,
        "image_size": image_size,
        "parameters": {
            "teacher": count_parameters(model.teacher),
            "student": count_parameters(model.student),
            "segmentation": count_parameters(model.segmentation),
        },
        "learnable_parameters": count_parameters(model.student) + count_parameters(model.segmentation),
        "teacher_features": [shape(t) for t in t_feats],
        "student_features": [shape(s) for s in s_feats],
        "segmentation_input": shape(seg_input),
        "segmentation_output": shape(out),
        "macs_per_image": {**macs, "inference": macs["teacher"] + macs["student"] + macs["segmentation"]},
    }

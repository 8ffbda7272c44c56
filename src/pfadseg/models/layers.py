"""Small building pieces shared by several modules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) → BN → ReLU."""
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def kaiming_init(module: nn.Module, zero_conv_biases: bool = True) -> None:
    """ResNet initialisation: Kaiming-normal (fan_out) conv weights, BN weight 1 and bias 0.

    ``zero_conv_biases=False`` leaves conv biases at PyTorch's default, as the official DeSTSeg loop does.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None and zero_conv_biases:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out that way (and not also contiguous), else contiguous."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class _GridMean(torch.autograd.Function):
    """Mean over each cell of a g×g grid that tiles the input exactly.

    The same values as ``adaptive_avg_pool2d``; the backward writes the gradient in one dense pass in
    the input's memory format. PyTorch's own backward hands back a broadcast (or, in channels_last,
    a reformatted) gradient that autograd then adds to the input's other gradients in a slow strided
    pass (docs/performance.md, "SPR, AFF and ASPP pool with a dense backward").
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, grid: int) -> torch.Tensor:
        ctx.grid, ctx.shape, ctx.dtype, ctx.memory_format = grid, x.shape, x.dtype, memory_format_of(x)
        return F.adaptive_avg_pool2d(x, grid)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        n, c, h, w = ctx.shape
        g = ctx.grid
        ch, cw = h // g, w // g
        out = torch.empty(ctx.shape, dtype=ctx.dtype, device=grad.device, memory_format=ctx.memory_format)
        cells = out.unflatten(2, (g, ch)).unflatten(4, (g, cw))  # a view: (N, C, g, ch, g, cw)
        cells.copy_((grad / (ch * cw)).view(n, c, g, 1, g, 1).expand_as(cells))
        return out, None


def sliced_average_pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``adaptive_avg_pool2d(x, grid)`` written as slices: cell i of a side n spans [⌊i·n/g⌋, ⌈(i+1)·n/g⌉).

    For ``torch.export`` with symbolic heights and widths (the `aspect` geometry's ONNX file): the exporter
    specialises adaptive pooling to the traced size, and cells overlap or not depending on the size's parity.
    Only non-negative integer divisions: ONNX's integer Div truncates, so ``-(-a // b)`` would not be a ceiling.
    """
    h, w = x.shape[-2:]
    rows = [x[..., (i * h) // grid : ((i + 1) * h + grid - 1) // grid, :] for i in range(grid)]
    cells = [[r[..., (j * w) // grid : ((j + 1) * w + grid - 1) // grid].mean(dim=(-2, -1)) for j in range(grid)] for r in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in cells], dim=-2)


def average_pools(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``adaptive_avg_pool2d(x, s)`` for each size ``s`` (each dividing the largest), in one pass over x.

    Where the largest grid tiles x exactly, the coarser pools are taken from the finest one and its
    gradient is written densely (:class:`_GridMean`); otherwise (odd sizes) each pool is PyTorch's.
    Under ``torch.export`` every pool is :func:`sliced_average_pool`, which holds for any size.
    """
    if torch.compiler.is_exporting():
        return [sliced_average_pool(x, s) for s in sizes]
    finest = max(sizes)
    if x.shape[-2] % finest or x.shape[-1] % finest:
        return [F.adaptive_avg_pool2d(x, s) for s in sizes]
    fine = _GridMean.apply(x, finest) if x.requires_grad and torch.is_grad_enabled() else F.adaptive_avg_pool2d(x, finest)
    return [fine if s == finest else F.adaptive_avg_pool2d(fine, s) for s in sizes]


class GlobalAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` with the dense backward of :func:`average_pools`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_pools(x, (1,))[0]

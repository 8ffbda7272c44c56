"""Averaging a network's weights over the last steps of its training stage (stochastic weight averaging).

At a constant learning rate the last SGD iterate lands wherever the last noisy steps took it; the
mean of the iterates over a stage's tail sits near the centre of that region instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """The running mean of ``module``'s floating-point parameters and buffers (BatchNorm statistics included)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.tensors = {name: value.detach().clone() for name, value in self._floating()}
        self.count = 0

    def _floating(self) -> Iterator[tuple[str, torch.Tensor]]:
        state = self.module.state_dict(keep_vars=True)
        return ((name, value) for name, value in state.items() if value.is_floating_point())

    def update(self) -> None:
        """Fold the module's current weights into the mean."""
        self.count += 1
        with torch.no_grad():
            for name, value in self._floating():
                self.tensors[name].lerp_(value.detach(), 1.0 / self.count)

    def apply(self) -> None:
        """Give the module the averaged weights (integer buffers, e.g. BatchNorm's batch count, keep theirs)."""
        with torch.no_grad():
            for name, value in self._floating():
                value.copy_(self.tensors[name])

    def load(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        """Restore a saved mean of ``count`` iterates (for an exact resume)."""
        for name, value in self.tensors.items():
            value.copy_(tensors[name])
        self.count = count

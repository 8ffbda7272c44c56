"""Which memory format each training stage runs in, and the parts that must stay contiguous.

Training runs channels_last where the precision asks for it, except the submodules that the CPU
backend would train wrongly or slowly in that layout (:func:`contiguous_islands`): those keep
contiguous parameters and, while they train, contiguous inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pfadseg.training.runtime import Precision


def trains_well_channels_last(module: nn.Module) -> bool:
    """False when, in bf16 + channels_last on a CPU, oneDNN (as shipped with PyTorch 2.13) trains ``module`` wrongly or slowly.

    Wrongly: a dilated conv whose input channels are not a multiple of 16 gets NaN/inf weight
    gradients (at 24 and 40 channels, the EfficientNet-Lite0 teacher's widths; 48, 64 and 112 are
    exact). Slowly: batch norm over such a width, several times slower than contiguous.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and max(m.dilation) > 1 and m.in_channels % 16:
            return False
        if isinstance(m, nn.BatchNorm2d) and m.num_features % 16:
            return False
    return True


def contiguous_islands(net: nn.Module, precision: Precision, device: torch.device) -> dict[str, nn.Module]:
    """The largest submodules of ``net`` that must train contiguous while the rest trains channels_last.

    Empty unless training runs bf16 + channels_last on a CPU. A module goes whole when none of its
    children trains well channels_last (one format change at its border), else its children are examined
    (always for a ModuleList or ModuleDict, which are never called themselves).
    """
    if not (device.type == "cpu" and precision.autocast_dtype == torch.bfloat16 and precision.channels_last):
        return {}
    islands: dict[str, nn.Module] = {}

    def visit(name: str, module: nn.Module) -> None:
        if trains_well_channels_last(module):
            return
        children = list(module.named_children())
        called = not isinstance(module, (nn.ModuleList, nn.ModuleDict))  # containers without a forward: no hook would fire
        if called and not any(trains_well_channels_last(child) for _, child in children):
            islands[name] = module
            return
        for child_name, child in children:
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", net)
    return islands


def keep_contiguous(modules: Iterable[nn.Module]) -> list[RemovableHandle]:
    """Make each module's parameters contiguous and, while it trains, its 4-D inputs; returns the hooks to remove."""

    def contiguous_inputs(module: nn.Module, args: tuple) -> tuple | None:
        if not module.training:
            return None
        return tuple(a.contiguous() if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)

    handles = []
    for module in modules:
        module.to(memory_format=torch.contiguous_format)
        handles.append(module.register_forward_pre_hook(contiguous_inputs))
    return handles


class StageFormats:
    """The memory formats of the two training stages: stage 1 trains ``student``, stage 2 ``segmentation``.

    :meth:`enter` puts the whole model in the precision's format and the stage's islands back to
    contiguous (once per stage change); :meth:`release` removes the islands' hooks.
    """

    def __init__(self, model: nn.Module, student: nn.Module, segmentation: nn.Module, precision: Precision, device: torch.device) -> None:
        self.model = model
        self.precision = precision
        self.islands = {1: contiguous_islands(student, precision, device), 2: contiguous_islands(segmentation, precision, device)}
        self.stage = 0
        self._hooks: list[RemovableHandle] = []

    @property
    def memory_format(self) -> torch.memory_format:
        return self.precision.memory_format()

    def enter(self, stage: int) -> None:
        """Lay the model out for ``stage`` (nothing to do when it already is)."""
        if self.stage != stage:
            self.release()
            self.model.to(memory_format=self.memory_format)
            self._hooks = keep_contiguous(self.islands[stage].values())
            self.stage = stage

    def release(self) -> None:
        """Remove the stage's contiguous-island hooks (the model then runs in one memory format)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.stage = 0

    def describe(self) -> str:
        """E.g. ``stage 1 channels_last (contiguous: decoder.layer1), stage 2 channels_last``."""
        base = "channels_last" if self.precision.channels_last else "contiguous"
        parts = []
        for stage, islands in self.islands.items():
            names = ", ".join(name or "all" for name in islands)
            parts.append(f"stage {stage} {base}" + (f" (contiguous: {names})" if names else ""))
        return ", ".join(parts)

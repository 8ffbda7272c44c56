"""The frozen ImageNet teacher: base class, registry and weight-loading helpers.

A teacher maps an RGB image in [0, 1] to three feature maps at strides 4, 8 and 16.
It never trains: no parameter needs a gradient and it stays in eval mode, so its
BatchNorm statistics are the ImageNet ones even while the student around it trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pfadseg.errors import PfadsegError

TeacherFactory = Callable[[bool, Path | None, tuple[int, ...]], "Teacher"]

# name -> factory(pretrained, weights_path, taps); filled by @register_teacher in the backbone modules.
TEACHERS: dict[str, TeacherFactory] = {}


class Teacher(nn.Module):
    """Base class: subclasses set up their layers and implement `features`; `build_teacher` freezes them."""

    channels: tuple[int, int, int]

    def __init__(
        self,
        channels: tuple[int, int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        signed_features: bool = False,
    ) -> None:
        """`mean`/`std` are per RGB channel, on the [0, 1] scale the input comes in.

        `signed_features`: the tapped features take negative values (no ReLU after them), so the
        student's outputs must be able to as well.
        """
        super().__init__()
        self.channels = channels
        self.signed_features = signed_features
        # Not persistent: they are constants of the backbone, not weights to save.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """RGB in [0, 1], shape (N, 3, H, W) -> the input the backbone was trained on."""
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> list[Tensor]:
        """Normalized image -> three feature maps at strides 4, 8, 16."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.features(self.normalize(x))

    def train(self, mode: bool = True) -> Teacher:
        """Ignore `mode`: the teacher is always in eval mode (fixed BatchNorm statistics)."""
        return super().train(False)

    def freeze(self) -> Teacher:
        """Switch off gradients and training mode for good."""
        self.requires_grad_(False)
        return self.eval()


def register_teacher(name: str) -> Callable[[TeacherFactory], TeacherFactory]:
    """Decorator adding `factory(pretrained, weights, taps) -> Teacher` to TEACHERS under `name`."""

    def add(factory: TeacherFactory) -> TeacherFactory:
        TEACHERS[name] = factory
        return factory

    return add


def available_teachers() -> list[str]:
    """The registered teacher names, sorted."""
    return sorted(TEACHERS)


def build_teacher(
    name: str, pretrained: bool = True, weights: str | os.PathLike[str] | None = None, taps: tuple[int, ...] = ()
) -> Teacher:
    """Build a frozen teacher.

    `weights` (a state-dict file of the full classifier) wins over `pretrained`;
    `pretrained=False` without `weights` gives random initialisation (tests, --no-pretrained).
    `taps`: the backbone blocks whose outputs are the three feature levels; empty = the teacher's default.
    """
    if name not in TEACHERS:
        raise PfadsegError(f"unknown teacher {name!r}; known teachers: {', '.join(available_teachers())}")
    path = None if weights is None else Path(weights)
    if path is not None and not path.is_file():
        raise PfadsegError(f"teacher weights file not found: {path}")
    return TEACHERS[name](pretrained, path, tuple(taps)).freeze()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a .pth state dict safely (tensors only, no arbitrary pickle)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, foreign pickle, ...: all mean "not usable"
        raise PfadsegError(f"cannot read teacher weights {path}: {err}".splitlines()[0]) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PfadsegError(f"teacher weights {path} is not a state dict of tensors")
    return dict(state)

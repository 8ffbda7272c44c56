"""Saving and loading weights with safetensors (never pickle) and the run's YAML config."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pfadseg.errors import PfadsegError
from pfadseg.fileio import atomic_path

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` atomically (contiguous CPU copies; safetensors needs them)."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or tampered file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise PfadsegError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PfadsegError(f"{path}: not a readable safetensors file ({err})") from None


def first_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """Describe the first missing, mis-shaped or unexpected key; None when ``state`` fits."""
    for key, want in expected.items():
        if key not in state:
            return f"missing key {key!r}"
        if state[key].shape != want.shape:
            return f"{key!r} has shape {tuple(state[key].shape)}, expected {tuple(want.shape)}"
    for key in state:
        if key not in expected:
            return f"unexpected key {key!r}"
    return None


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(strict=True)`` with a one-line error naming ``source`` and the first mismatch."""
    problem = first_mismatch(module.state_dict(), state)
    if problem is not None:
        raise PfadsegError(f"{source}: weights do not fit {type(module).__name__} as configured: {problem}")
    module.load_state_dict(state, strict=True)


def metadata_json(**items: object) -> dict[str, str]:
    """safetensors metadata must be str → str."""
    return {k: json.dumps(v) for k, v in items.items()}

"""Saving and loading weights with safetensors (never pickle) and the run's YAML config."""

from __future__ import annotations

import json
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


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(strict=True)`` with a one-line error naming ``source`` and the first mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} has shape {tuple(state[k].shape)}, the model expects {tuple(own[k].shape)}"
        elif missing:
            detail = f"{len(missing)} tensors missing (first: {missing[0]})"
        else:
            detail = f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})"
        raise PfadsegError(f"{source}: weights do not fit this model configuration: {detail}")
    module.load_state_dict(state, strict=True)


def metadata_json(**items: object) -> dict[str, str]:
    """safetensors metadata must be str → str."""
    return {k: json.dumps(v) for k, v in items.items()}

"""A run directory: the names of its files, and loading a trained run back.

A run directory holds ``config.yaml`` (the full resolved configuration), ``model.safetensors``
(all weights, teacher included, so a run needs no download to be used), ``train_log.jsonl``,
``metrics.json`` when there was a test split, ``thresholds.json`` (the calibrated OK/NG
thresholds), ``run_info.json`` (wall time, versions, machine) and, while training,
``checkpoint.safetensors``. Every file is written to a temporary name and renamed; none is
ever loaded with pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pfadseg.checkpoint import CONFIG_FILE, MODEL_FILE, load_state_strict, load_tensors, metadata_json, save_tensors
from pfadseg.config import RunConfig, run_config_from_yaml, to_dict
from pfadseg.errors import PfadsegError
from pfadseg.models import PFADSeg, build_model
from pfadseg.training.runtime import Precision, resolve_device, resolve_precision
from pfadseg.version import __version__

METRICS_FILE = "metrics.json"
RUN_INFO_FILE = "run_info.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "train_log.jsonl"


def load_run_config(run_dir: str | Path) -> RunConfig:
    """A run's ``config.yaml``; a folder without one is a one-line error."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise PfadsegError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return run_config_from_yaml(run_dir / CONFIG_FILE)


def absolute_paths(config: RunConfig) -> RunConfig:
    """Data paths made absolute, so that the saved config works from any directory."""
    data = config.data
    absolute = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
    return replace(config, data=replace(data, root=absolute(data.root), textures=absolute(data.textures)))


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run, or to restart (not resume) an interrupted one."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise PfadsegError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); nothing to resume")
        if not (run_dir / CHECKPOINT_FILE).is_file():
            if (run_dir / MODEL_FILE).is_file():
                raise PfadsegError(f"{run_dir}: this run has already finished; nothing to resume")
            raise PfadsegError(f"{run_dir}: no checkpoint to resume from yet; start the run again without --resume")
        return
    if (run_dir / MODEL_FILE).exists():
        raise PfadsegError(f"{run_dir}: already holds a trained model; choose another --out or remove it")
    if (run_dir / CHECKPOINT_FILE).exists():
        raise PfadsegError(f"{run_dir}: holds an interrupted run; continue it with --resume or choose another --out")


def save_model(model: PFADSeg, config: RunConfig, run_dir: Path) -> None:
    """All weights (teacher included) with the configuration in the file's metadata."""
    save_tensors(run_dir / MODEL_FILE, model.state_dict(), metadata_json(config=to_dict(config), pfadseg_version=__version__))


@dataclass
class LoadedRun:
    """A trained model with its configuration, ready for inference."""

    run_dir: Path
    config: RunConfig
    model: PFADSeg
    device: torch.device
    precision: Precision


def load_run(run_dir: str | Path, device: str = "auto", precision: str | None = None) -> LoadedRun:
    """Load ``model.safetensors`` + ``config.yaml``; wrong shapes or a tampered file are one-line errors."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    state = load_tensors(run_dir / MODEL_FILE)
    model = build_model(config.model, pretrained=False)
    load_state_strict(model, state, run_dir / MODEL_FILE)
    dev = resolve_device(device)
    prec = resolve_precision(precision or config.train.precision, config.train.channels_last, dev)
    model = model.to(dev, memory_format=prec.memory_format()).eval()
    return LoadedRun(run_dir, config, model, dev, prec)

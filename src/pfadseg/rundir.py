"""A run directory: the names of its files, and loading a trained run back.

A run directory holds ``config.yaml`` (the full resolved configuration), ``model.safetensors``
(all weights, teacher included, so a run needs no download to be used), ``train_log.jsonl``,
``metrics.json`` when there was a test split, ``thresholds.json`` (the calibrated OK/NG
thresholds), ``run_info.json`` (wall time, versions, machine) and, while training,
``checkpoint.safetensors``. Every file is written to a temporary name and renamed; none is
ever loaded with pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pfadseg.checkpoint import CONFIG_FILE, MODEL_FILE, load_state_strict, load_tensors, metadata_json, save_tensors
from pfadseg.config import RunConfig, run_config_from_yaml, to_dict
from pfadseg.errors import PfadsegError
from pfadseg.models import PFADSeg, build_model
from pfadseg.models.fusion import Fusion
from pfadseg.models.memory_bank import MemoryBank
from pfadseg.training.runtime import Precision, inference_precision, resolve_device
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


def load_run(run_dir: str | Path, device: str = "auto", precision: str = "fp32") -> LoadedRun:
    """Load ``model.safetensors`` + ``config.yaml`` for inference in ``precision`` (fp32: the decision precision).

    Wrong shapes or a tampered file are one-line errors.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    state = load_tensors(run_dir / MODEL_FILE)
    model = build_model(config.model, pretrained=False)
    if "memory_bank.patches" in state:  # slots of the saved bank's size, for the strict load below
        model.memory_bank = MemoryBank.empty(*state["memory_bank.patches"].shape, config.bank)
    if "fusion.knn_weight" in state:
        model.fusion = Fusion()
    load_state_strict(model, state, run_dir / MODEL_FILE)
    dev = resolve_device(device)
    prec = inference_precision(precision)
    model = model.to(dev, memory_format=prec.memory_format()).eval()
    return LoadedRun(run_dir, config, model, dev, prec)


def _read_json(path: Path) -> dict | None:
    """A run's JSON file, or None when the run has none (or it is unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """``pfadseg info --run``: configuration, parameters, metrics, thresholds, file sizes and versions of a run."""
    run = load_run(run_dir, device="cpu")
    config, model = run.config, run.model
    info = _read_json(run.run_dir / RUN_INFO_FILE) or {}
    return {
        "run_dir": str(run.run_dir),
        "model": {"teacher": config.model.teacher, "aff": config.model.block.aff, "pcar": config.model.block.pcar,
                  "head": config.model.head.kind,
                  "parameters": {part: sum(p.numel() for p in getattr(model, part).parameters()) for part in ("teacher", "student", "segmentation")}},
        "training": {k: getattr(config.train, k) for k in ("image_size", "batch_size", "student_steps", "segmentation_steps", "lr_student",
                                                            "lr_seg_blocks", "lr_seg_head", "lr_schedule", "seg_average_last", "precision")},
        "data": {"root": config.data.root, "category": config.data.category, "format": config.data.format,
                 "geometry": config.data.geometry, "tile_scale": config.data.tile_scale},
        "seed": config.seed,
        "memory_bank": None if model.memory_bank is None else {"patches": len(model.memory_bank.patches),
                                                                "megabytes": model.memory_bank.megabytes, "output": model.output_branch},
        "metrics": _read_json(run.run_dir / METRICS_FILE),
        "thresholds": {p.name: _read_json(p) for p in sorted(run.run_dir.glob("thresholds*.json"))},
        "files": {p.name: p.stat().st_size for p in sorted(run.run_dir.iterdir()) if p.is_file() and not p.name.startswith(".")},
        "trained": {k: info.get(k) for k in ("seconds", "device", "precision", "processes", "versions", "machine")} if info else None,
    }


def describe_run(summary: dict[str, Any]) -> str:
    """:func:`summarize_run` as readable lines."""
    m, t = summary["model"], summary["training"]
    params = ", ".join(f"{part} {n:,d}" for part, n in m["parameters"].items())
    lines = [f"run {summary['run_dir']}",
             f"  model      teacher {m['teacher']}, AFF {'on' if m['aff'] else 'off'}, PCAR {'on' if m['pcar'] else 'off'}, head {m['head']}; "
             f"parameters: {params}",
             f"  training   {t['image_size']}², batch {t['batch_size']}, {t['student_steps']} + {t['segmentation_steps']} steps, "
             f"lr {t['lr_student']} / {t['lr_seg_blocks']} / {t['lr_seg_head']} ({t['lr_schedule']}"
             + (f", segmentation net averaged over the last {t['seg_average_last']:.0%} of stage 2" if t["seg_average_last"] else "")
             + f"), {t['precision']}, seed {summary['seed']}",
             f"  data       {summary['data']['root']} ({summary['data']['format']}, category {summary['data']['category'] or '-'}), "
             + {"square": "square inputs", "aspect": "whole images at their aspect",
                "tiles": f"tiles of the images scaled by {summary['data']['tile_scale']:g}"}[summary["data"]["geometry"]]]
    if summary["memory_bank"]:
        bank = summary["memory_bank"]
        lines.append(f"  bank       {bank['patches']:,d} patches ({bank['megabytes']:.1f} MB); output: the {bank['output']} map")
    if summary["metrics"]:
        names = {"image_auroc": "img AUROC", "pixel_auroc": "pix AUROC", "pixel_ap": "pix AP", "aupro": "AUPRO", "iap": "IAP", "iap90": "IAP@90"}
        lines.append("  metrics    " + ", ".join(f"{label} {100 * summary['metrics'][k]:.2f}" for k, label in names.items()
                                               if k in summary["metrics"]))
    for name, th in summary["thresholds"].items():
        if th:
            lines.append(f"  {name:<10} image {th['image']:.4f}, pixel {th['pixel']:.4f} at {100 * th['target_fpr']:g} % target false alarms, "
                         f"{len(th['calibration_images'])} held-out images, {th.get('precision') or 'precision not recorded'}")
    if summary["trained"]:
        tr = summary["trained"]
        versions = ", ".join(f"{k} {v}" for k, v in (tr.get("versions") or {}).items())
        lines.append(f"  trained    {tr['seconds'] / 60:.1f} min on {tr['device']} ({tr['precision']}); {versions}")
    lines.append("  files      " + ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in summary["files"].items()))
    return "\n".join(lines)

"""Adding a memory bank to a trained model: gather the teacher's patch features, select a coreset, fit the fusion.

Runs after training (``pfadseg train`` with ``bank.enabled``) or on an existing run (``pfadseg bank``). The bank
holds patches of the normal *training* images only; the fusion's statistics come only from the normal images
held out of training, the same ones that set the OK/NG thresholds, so no test image influences either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pfadseg.calibration import format_calibration, recalibrate
from pfadseg.checkpoint import CONFIG_FILE
from pfadseg.config import RunConfig, dump_yaml, merge
from pfadseg.data.datasets import holdout_split, load_splits
from pfadseg.data.tiling import Layout
from pfadseg.evaluate import Inputs, evaluate_run, infer, input_batches, load_inputs
from pfadseg.fileio import write_text_atomic
from pfadseg.metrics import pixels
from pfadseg.models import PFADSeg
from pfadseg.models.fusion import Fusion
from pfadseg.models.memory_bank import build_memory_bank, coreset_size, patch_features
from pfadseg.progress import progress_bar
from pfadseg.rundir import load_run, save_model
from pfadseg.training.runtime import DECISION_PRECISION, to_device


@dataclass
class BankReport:
    """What building a bank did: sizes, time, and whether the output is fused."""

    patches: int  # training patches the coreset chose from
    kept: int
    megabytes: float
    seconds: float
    fused: bool

    def summary(self) -> str:
        text = (f"memory bank: {self.kept:,d} of {self.patches:,d} training patches ({100 * self.kept / self.patches:.1f} %), "
                f"{self.megabytes:.1f} MB, built in {self.seconds:.1f} s; ")
        if self.fused:
            return text + ("the output is now the fused map: segmentation + kNN, the kNN map rescaled to vary as much as the "
                           "segmentation map over the held-out normal images")
        return text + NO_FUSION


NO_FUSION = ("no fusion: no normal images were held out of training (calibration.holdout is 0), and the maps can only be put on a "
             "common scale with normal images the model has not seen; the output stays the segmentation map (the kNN map is "
             "reported beside it). Train with --holdout 0.1 to fuse")


@torch.no_grad()
def gather_patches(model: PFADSeg, images: Inputs, layout: Layout | None, strides: tuple[int, ...], device: torch.device,
                   batch_size: int = 16) -> torch.Tensor:
    """Patch features (M, D) float32 of the images (of every tile of them in the `tiles` geometry, of
    each whole scaled image in `aspect`), computed in the
    decision precision (fp32)."""
    rows = []
    for batch in input_batches(images, layout, batch_size):
        x = to_device(batch, device).float().div_(255)
        feats = patch_features(model.teacher(x), strides)
        rows.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    return torch.cat(rows)


def add_memory_bank(model: PFADSeg, train_images: Inputs, held_out_images: Inputs, config: RunConfig,
                    device: torch.device, progress: bool = True) -> BankReport:
    """Give ``model`` a bank of ``train_images``' patches and, with held-out images, the fusion fitted on them."""
    started = time.perf_counter()
    model.eval()
    model.fusion = None
    layout = config.data.layout(config.train.image_size)
    patches = gather_patches(model, train_images, layout, config.bank.strides, device, config.train.eval_batch_size)
    bar = progress_bar(coreset_size(len(patches), config.bank), "memory bank", "patches", enabled=progress)
    bank, total = build_memory_bank(patches, config.bank, config.seed, bar.update)
    bar.close()
    model.memory_bank = bank.to(device)
    if len(held_out_images):
        branches = infer(model, held_out_images, DECISION_PRECISION, device, config.train.eval_size, config.train.eval_batch_size,
                         layout=layout)
        fusion = Fusion().to(device)
        (seg_maps, seg_scores), (knn_maps, knn_scores) = (branches[name] for name in ("segmentation", "knn"))
        tensor = lambda values: torch.from_numpy(pixels(values))  # noqa: E731
        fusion.fit((tensor(seg_maps), tensor(knn_maps)), (tensor(seg_scores), tensor(knn_scores)))
        model.fusion = fusion
    return BankReport(total, len(bank.patches), bank.megabytes, time.perf_counter() - started, model.fusion is not None)


def rebuild_bank(run_dir: str | Path, overrides: dict[str, Any] | None = None, device: str = "auto", progress: bool = True,
                 log: Callable[[str], None] = print) -> BankReport:
    """``pfadseg bank``: (re)build an existing run's bank with ``config.bank`` plus ``overrides``, then evaluate and calibrate again.

    Each file is replaced atomically; if the command is stopped before the thresholds are set again, ``pfadseg calibrate``
    sets them on the new output.
    """
    run = load_run(run_dir, device, "fp32")
    config: RunConfig = merge(run.config, {"bank": {**(overrides or {}), "enabled": True}})
    splits = load_splits(config.data)
    train_samples, held_out = holdout_split(splits.train, config.calibration.holdout, config.seed)
    size, layout = config.train.image_size, config.data.layout(config.train.image_size)
    report = add_memory_bank(run.model, load_inputs(train_samples, size, layout), load_inputs(held_out, size, layout), config, run.device,
                             progress)
    log(report.summary())
    save_model(run.model, config, run.run_dir)
    write_text_atomic(run.run_dir / CONFIG_FILE, dump_yaml(config))
    if held_out:
        log("setting the thresholds again, on the new output")
        log(format_calibration(recalibrate(run.run_dir, device=device, progress=progress)))
    elif splits.test:
        evaluate_run(run.run_dir, device=device, progress=progress)
    return report

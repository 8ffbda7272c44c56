"""Training a configured run end to end: data, model, the two stages, then evaluation, calibration and the run's files."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pfadseg.bank import add_memory_bank
from pfadseg.calibration import calibrate, format_calibration
from pfadseg.checkpoint import CONFIG_FILE
from pfadseg.config import RunConfig, TrainConfig, dump_yaml, evaluation_geometry
from pfadseg.data.augment import normal_augmentation
from pfadseg.data.datasets import DatasetSplits, Sample, holdout_split, load_splits
from pfadseg.data.images import ImageCache
from pfadseg.data.synthesis import AnomalySynthesizer
from pfadseg.data.textures import load_texture_source
from pfadseg.environment import environment
from pfadseg.evaluate import Evaluation, Inputs, eval_shapes, evaluate, load_eval_masks, load_inputs, write_metrics
from pfadseg.fileio import write_json_atomic, write_text_atomic
from pfadseg.metrics import pixels
from pfadseg.models import PFADSeg, build_model
from pfadseg.rundir import CHECKPOINT_FILE, RUN_INFO_FILE, absolute_paths, check_run_dir, load_run_config, save_model
from pfadseg.thresholds import THRESHOLDS_FILE
from pfadseg.training.batches import BatchMaker, RandomTiles, SizeGroups
from pfadseg.training.distributed import Distributed, init_distributed
from pfadseg.training.runtime import DECISION_PRECISION, Precision, resolve_device, resolve_precision
from pfadseg.training.trainer import Trainer


@dataclass
class TrainResult:
    """What ``train`` returns: where the run is, what it measured, how long it took."""

    run_dir: Path
    config: RunConfig
    evaluation: Evaluation | None
    seconds: float
    summary: dict[str, float]
    model: PFADSeg

    @property
    def metrics(self) -> dict[str, float] | None:
        return None if self.evaluation is None else self.evaluation.metrics


@dataclass
class RunData:
    """A run's images, decoded before anything is written: a bad file fails first."""

    splits: DatasetSplits
    train_images: Inputs  # square: (N, 3, S, S) uint8 on the device; tiles, aspect: RGB arrays at their layout's size
    held_out: list[Sample]  # normal training images kept aside to set the OK/NG thresholds
    textures: torch.Tensor
    cache: ImageCache


def load_run_data(config: RunConfig, device: torch.device, log: Callable[[str], None]) -> RunData:
    """Every image the run will read (train, held-out, test, masks, textures), decoded once into one cache."""
    size = config.train.image_size
    splits = load_splits(config.data)
    cache = ImageCache()
    log(f"data: {splits.summary()}")
    train_samples, held_out = holdout_split(splits.train, config.calibration.holdout, config.seed)
    if held_out:
        log(f"calibration: {len(held_out)} normal training images held out to set the OK/NG thresholds")
    layout = config.data.layout(size)
    images = load_inputs(train_samples, size, layout, cache)
    if layout is None:
        images = images.to(device)
    load_inputs(held_out + splits.test, size, layout, cache)
    eval_size = config.train.eval_size  # the masks on the grid evaluation will compare them on
    load_eval_masks(splits.test, eval_size, eval_shapes(splits.test, evaluation_geometry(config), eval_size), cache, splits.binarize_at)
    textures = load_texture_source(config.data, size, config.seed).to(device)
    return RunData(splits, images, held_out, textures, cache)


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    teacher_weights: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train (or resume) a run; evaluates on the test split when there is one."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    config = load_run_config(run_dir) if resume else absolute_paths(config)
    device = resolve_device(config.device)
    distributed = init_distributed(device.type)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    if not distributed.is_main:
        log = _silent
    precision = resolve_precision(config.train.precision, config.train.channels_last, device)
    data = load_run_data(config, device, log)
    torch.manual_seed(config.seed)
    model = build_model(config.model, pretrained=not resume, teacher_weights=None if resume else teacher_weights).to(device)
    if distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_text_atomic(run_dir / CONFIG_FILE, dump_yaml(config))
    trainer = _trainer(model, config, data, precision, run_dir, device, distributed)
    if resume:
        trainer.load_checkpoint()
        log(f"resuming {run_dir} at step {trainer.step}/{trainer.total_steps}")
    _log_plan(config, trainer, device, log)
    summary = trainer.fit(progress=progress)
    if not distributed.is_main:  # rank 0 writes the run; the others wait for it and leave
        distributed.barrier()
        return TrainResult(run_dir, config, None, time.perf_counter() - started, summary, model)
    evaluation = _finish(model, config, data, device, run_dir, progress, log)
    seconds = time.perf_counter() - started
    write_json_atomic(run_dir / RUN_INFO_FILE, {"seconds": seconds, "resumed": resume, **summary,
                                                "device": str(device), "precision": precision.name,
                                                "processes": distributed.world_size, **environment()})
    distributed.barrier()
    return TrainResult(run_dir, config, evaluation, seconds, summary, model)


def _trainer(model: PFADSeg, config: RunConfig, data: RunData, precision: Precision, run_dir: Path, device: torch.device,
             distributed: Distributed) -> Trainer:
    """The Trainer over this rank's batches of the run's images."""
    images = data.train_images
    if config.data.geometry == "tiles":
        images = RandomTiles(images, config.train.image_size, device)
    elif config.data.geometry == "aspect":
        images = SizeGroups(images, device)
    batches = BatchMaker(
        images,
        AnomalySynthesizer(data.textures, config.synthesis),
        normal_augmentation(config.data),
        distributed.per_rank_batch(config.train.batch_size),
        config.seed,
        precision.memory_format(),
        rank=distributed.rank,
        world_size=distributed.world_size,
    )
    return Trainer(model, config, batches, precision, run_dir, device, distributed)


def _log_plan(config: RunConfig, trainer: Trainer, device: torch.device, log: Callable[[str], None]) -> None:
    recipe, size = config.train, config.train.image_size
    log(f"training on {device} ({trainer.precision.name}; {trainer.formats.describe()}): "
        f"{recipe.student_steps} student + {recipe.segmentation_steps} segmentation steps, batch {recipe.batch_size}, "
        + {"tiles": f"{size}×{size} tiles of the images scaled by {config.data.tile_scale:g}",
           "aspect": f"whole images, {size} on the shorter side (batches grouped by size)"}.get(config.data.geometry, f"{size}×{size}"))
    if trainer.distributed.enabled:
        log(f"data-parallel over {trainer.distributed.world_size} processes, {trainer.batches.batch_size} images each per step")


def _finish(model: PFADSeg, config: RunConfig, data: RunData, device: torch.device, run_dir: Path,
            progress: bool, log: Callable[[str], None]) -> Evaluation | None:
    """Save the model (with its memory bank when configured), then evaluate on the test split, calibrate on the held-out
    images and write their files.

    Both in the decision precision, exactly as ``pfadseg test``, ``predict`` and the ONNX export compute scores.
    """
    save_model(model, config, run_dir)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    evaluation = None
    recipe = config.train
    precision = DECISION_PRECISION
    layout = config.data.layout(recipe.image_size)
    model.to(memory_format=precision.memory_format())
    if config.bank.enabled:  # the trained weights are saved above first: a failure here loses no training
        held_out_images = load_inputs(data.held_out, recipe.image_size, layout, data.cache)
        log(add_memory_bank(model, data.train_images, held_out_images, config, device, progress).summary())
        save_model(model, config, run_dir)
    if data.splits.test:
        evaluation = evaluate(model, data.splits.test, recipe.image_size, recipe.eval_size, precision, device,
                              recipe.eval_batch_size, data.splits.binarize_at, data.cache, progress, layout=layout,
                              eval_geometry=evaluation_geometry(config))
    if data.held_out:
        thresholds = calibrate(model, data.held_out, evaluation, config, precision, device, cache=data.cache)
        write_json_atomic(run_dir / THRESHOLDS_FILE, thresholds)
        log(format_calibration(thresholds))
    if evaluation is not None:
        write_metrics(run_dir, evaluation)
        if np.ptp(pixels(evaluation.branches["segmentation"].maps)) < 1e-6:  # a saturated sigmoid: (almost) one value everywhere
            log("warning: the anomaly map is (almost) zero everywhere, or otherwise constant: the segmentation network's output saturated during "
                f"training and these metrics mean nothing; retrain with {saturation_remedies(recipe)} (docs/benchmarks.md)")
    return evaluation


def saturation_remedies(train: TrainConfig) -> str:
    """What to change after a saturated segmentation network, leaving out what the run already did."""
    lower_rates = "lower segmentation learning rates (--set train.lr_seg_blocks=..., train.lr_seg_head=...)"
    if train.seg_warmup_steps > 0:
        return lower_rates
    return f"--set train.seg_warmup_steps={max(1, train.segmentation_steps // 10)}, {lower_rates}"


def _silent(message: str) -> None:
    """The log of the replicas other than rank 0."""

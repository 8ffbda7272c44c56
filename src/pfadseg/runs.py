"""Run directories: training a configured run end to end, resuming it, and loading it back.

A run directory holds ``config.yaml`` (the full resolved configuration), ``model.safetensors``
(all weights, teacher included, so a run needs no download to be used), ``train_log.jsonl``,
``metrics.json`` when there was a test split, ``thresholds.json`` (the calibrated OK/NG
thresholds), ``run_info.json`` (wall time, versions, machine) and while training
``checkpoint.safetensors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pfadseg import __version__
from pfadseg.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    load_state_strict,
    load_tensors,
    metadata_json,
    save_tensors,
)
from pfadseg.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    dump_yaml,
    run_config_from_yaml,
    to_dict,
)
from pfadseg.data.augment import NormalAugmentation, augmentation_for_category
from pfadseg.data.datasets import (
    DatasetSplits,
    Sample,
    folder_spec_from_args,
    holdout_split,
    load_folder,
    load_mvtec,
)
from pfadseg.data.images import ImageCache, load_images, load_masks
from pfadseg.data.synthesis import AnomalySynthesizer
from pfadseg.data.textures import load_texture_folder, procedural_textures
from pfadseg.errors import PfadsegError
from pfadseg.evaluate import Evaluation, evaluate, infer
from pfadseg.fileio import atomic_path, write_json_atomic, write_text_atomic
from pfadseg.models import PFADSeg, build_model
from pfadseg.thresholds import THRESHOLDS_FILE, decision_rates, f1_threshold, format_rates, fpr_threshold, load_thresholds
from pfadseg.training.batches import BatchMaker
from pfadseg.training.distributed import init_distributed
from pfadseg.training.runtime import (
    Precision,
    resolve_device,
    resolve_precision,
)
from pfadseg.training.trainer import CHECKPOINT_FILE, Trainer

METRICS_FILE = "metrics.json"
RUN_INFO_FILE = "run_info.json"


def load_splits(data: DataConfig) -> DatasetSplits:
    """The train/test samples the data configuration names (MVTec layout or folder layout)."""
    if not data.root:
        raise PfadsegError("no dataset given: pass --data ROOT (and --category NAME for the MVTec layout)")
    if data.format == "mvtec":
        if not data.category:
            raise PfadsegError(f"{data.root}: the MVTec layout needs --category NAME")
        return load_mvtec(data.root, data.category)
    spec = folder_spec_from_args(
        data.root,
        normal_dir=data.normal_dir,
        abnormal_dirs=data.abnormal_dirs,
        images_subdir=data.images_subdir,
        image_ext=data.image_ext,
        mask_dir=data.mask_dir,
        mask_suffix=data.mask_suffix,
        mask_ext=data.mask_ext,
        split=data.split,
        normal_test_dir=data.normal_test_dir,
        binarize_at=data.binarize_at,
        name=data.category or None,
    )
    return load_folder(spec)


def load_texture_source(data: DataConfig, size: int, seed: int) -> torch.Tensor:
    """Anomaly textures (T,3,S,S) uint8: a folder of images, or the built-in procedural ones."""
    if data.textures:
        return load_texture_folder(data.textures, size)
    return procedural_textures(data.procedural_textures, size, seed)


def normal_augmentation(data: DataConfig) -> NormalAugmentation:
    """The training images' augmentation: the category's rotations (or the named one's) and the brightness jitter."""
    name = data.category if data.augmentation == "auto" else data.augmentation
    return replace(augmentation_for_category(name), brightness=data.brightness)


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


def absolute_paths(config: RunConfig) -> RunConfig:
    """Data paths made absolute, so that the saved config works from any directory."""
    data = config.data
    absolute = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
    return replace(config, data=replace(data, root=absolute(data.root), textures=absolute(data.textures)))


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run, or to restart (not resume) an interrupted one."""
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise PfadsegError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); nothing to resume")
        if not (run_dir / CHECKPOINT_FILE).is_file() and not (run_dir / MODEL_FILE).is_file():
            raise PfadsegError(f"{run_dir}: no checkpoint to resume from yet; start the run again without --resume")
        return
    if (run_dir / MODEL_FILE).exists():
        raise PfadsegError(f"{run_dir}: already holds a trained model; choose another --out or remove it")
    if (run_dir / CHECKPOINT_FILE).exists():
        raise PfadsegError(f"{run_dir}: holds an interrupted run; continue it with --resume or choose another --out")


def save_model(model: PFADSeg, config: RunConfig, run_dir: Path) -> None:
    """All weights (teacher included) with the configuration in the file's metadata."""
    save_tensors(run_dir / MODEL_FILE, model.state_dict(), metadata_json(config=to_dict(config), pfadseg_version=__version__))


def saturation_remedies(train: TrainConfig) -> str:
    """What to change after a saturated segmentation network, leaving out what the run already did."""
    remedies = [] if train.loss_from_logits else ["--set train.loss_from_logits=true"]
    if train.seg_warmup_steps == 0:
        remedies.append(f"--set train.seg_warmup_steps={max(1, train.segmentation_steps // 10)}")
    return ", ".join(remedies + ["lower segmentation learning rates (--set train.lr_seg_blocks=..., train.lr_seg_head=...)"])


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
    _check_run_dir(run_dir, resume)
    if resume:
        config = run_config_from_yaml(run_dir / CONFIG_FILE)
        if (run_dir / MODEL_FILE).is_file() and not (run_dir / CHECKPOINT_FILE).is_file():
            raise PfadsegError(f"{run_dir}: this run has already finished; nothing to resume")
    else:
        config = absolute_paths(config)
    device = resolve_device(config.device)
    distributed = init_distributed(device.type)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    if not distributed.is_main:
        log = _silent
    precision = resolve_precision(config.train.precision, config.train.channels_last, device)
    size = config.train.image_size

    # Everything that can fail on bad input happens before anything is written.
    splits = load_splits(config.data)
    cache = ImageCache()
    log(f"data: {splits.summary()}")
    train_samples, held_out = holdout_split(splits.train, config.calibration.holdout, config.seed)
    if held_out:
        log(f"calibration: {len(held_out)} normal training images held out to set the OK/NG thresholds")
    images = load_images(train_samples, size, cache).to(device)
    load_images(held_out + splits.test, size, cache)  # decode everything now: a bad file fails before training
    load_masks(splits.test, config.train.eval_size, cache, binarize_at=splits.binarize_at)
    textures = load_texture_source(config.data, size, config.seed).to(device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, pretrained=not resume, teacher_weights=None if resume else teacher_weights).to(device)

    if distributed.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_text_atomic(run_dir / CONFIG_FILE, dump_yaml(config))
    batches = BatchMaker(
        images,
        AnomalySynthesizer(textures, config.synthesis),
        normal_augmentation(config.data),
        distributed.per_rank_batch(config.train.batch_size),
        config.seed,
        precision.memory_format(),
        rank=distributed.rank,
        world_size=distributed.world_size,
    )
    trainer = Trainer(model, config, batches, precision, run_dir, device, distributed)
    if resume:
        trainer.load_checkpoint()
        log(f"resuming {run_dir} at step {trainer.step}/{trainer.total_steps}")
    log(f"training on {device} ({precision.name}; {trainer.describe_formats()}): "
        f"{config.train.student_steps} student + {config.train.segmentation_steps} segmentation steps, "
        f"batch {config.train.batch_size}, {size}×{size}")
    if distributed.enabled:
        log(f"data-parallel over {distributed.world_size} processes, {batches.batch_size} images each per step")
    summary = trainer.fit(progress=progress)
    if not distributed.is_main:  # rank 0 writes the run; the others wait for it and leave
        distributed.barrier()
        return TrainResult(run_dir, config, None, time.perf_counter() - started, summary, model)
    save_model(model, config, run_dir)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)

    evaluation = None
    if splits.test:  # with the inference precision, exactly as `pfadseg test` will run it
        model.to(memory_format=precision.memory_format())
        evaluation = evaluate(model, splits.test, size, config.train.eval_size, precision, device,
                              config.train.eval_batch_size, splits.binarize_at, cache, progress)
    if held_out:
        thresholds = calibrate(model, held_out, evaluation, config, precision, device, cache=cache)
        write_json_atomic(run_dir / THRESHOLDS_FILE, thresholds)
        log(format_calibration(thresholds))
    if evaluation is not None:
        write_metrics(run_dir, evaluation)
        # A saturated sigmoid gives (almost) one value everywhere, where the official loss has no gradient left.
        if np.ptp(evaluation.maps) < 1e-6:
            log("warning: the anomaly map is (almost) zero everywhere, or otherwise constant: the segmentation network's output saturated during "
                f"training and these metrics mean nothing; retrain with {saturation_remedies(config.train)} (docs/benchmarks.md)")
    seconds = time.perf_counter() - started
    write_json_atomic(run_dir / RUN_INFO_FILE, {"seconds": seconds, "resumed": resume, **summary,
                                                "device": str(device), "precision": precision.name,
                                                "processes": distributed.world_size, **environment()})
    distributed.barrier()
    return TrainResult(run_dir, config, evaluation, seconds, summary, model)


def _silent(message: str) -> None:
    """The log of the replicas other than rank 0."""


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def environment() -> dict[str, object]:
    """Versions and machine facts recorded beside every result, so numbers can be compared honestly."""
    import platform

    import numpy

    return {
        "versions": {"pfadseg": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()},
        "machine": {"cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }


def write_metrics(run_dir: Path, evaluation: Evaluation, name: str = METRICS_FILE) -> None:
    """``metrics.json``: the six metrics (fractions), the student–teacher diagnostic, and what the
    run's OK/NG thresholds decide on these test images."""
    labels = np.array([s.label for s in evaluation.samples], dtype=bool)
    decisions = decision_rates(evaluation.scores, labels, load_thresholds(run_dir)["image"])
    write_json_atomic(run_dir / name, {**evaluation.metrics, "student_teacher": evaluation.student_teacher_metrics, "decisions": decisions})


def calibrate(
    model: PFADSeg,
    held_out: list[Sample],
    evaluation: Evaluation | None,
    config: RunConfig,
    precision: Precision,
    device: torch.device,
    target_fpr: float | None = None,
    cache: ImageCache | None = None,
) -> dict:
    """Thresholds at the target false-alarm rate on held-out normal images, and the F1-optimal ones on labelled test data."""
    t = config.train
    fpr = config.calibration.target_fpr if target_fpr is None else target_fpr
    maps, scores, _, _ = infer(model, load_images(held_out, t.image_size, cache), precision, device, t.eval_size, t.eval_batch_size)
    result: dict = {"image": fpr_threshold(scores.numpy(), fpr), "pixel": fpr_threshold(maps.numpy(), fpr), "target_fpr": fpr,
                    "calibration_images": [s.rel_path for s in held_out]}
    if evaluation is not None:
        labels = np.array([s.label for s in evaluation.samples], dtype=bool)
        image_f1, image_best = f1_threshold(evaluation.scores, labels)
        pixel_f1, pixel_best = f1_threshold(evaluation.maps, evaluation.masks)
        result["f1_optimal"] = {"image": image_f1, "image_f1": image_best, "pixel": pixel_f1, "pixel_f1": pixel_best}
        result["test"] = {"calibrated": decision_rates(evaluation.scores, labels, result["image"]),
                          "f1_optimal": decision_rates(evaluation.scores, labels, image_f1)}
    return result


def format_calibration(thresholds: dict) -> str:
    """The calibration in a few readable lines."""
    lines = [f"thresholds at {100 * thresholds['target_fpr']:g} % target false alarms ({len(thresholds['calibration_images'])} held-out "
             f"normal images): image {thresholds['image']:.4f}, pixel {thresholds['pixel']:.4f}"]
    if "test" in thresholds:
        f1 = thresholds["f1_optimal"]
        lines.append(f"  on the test split: {format_rates(thresholds['test']['calibrated'])}")
        lines.append(f"  F1-optimal on the test split: image {f1['image']:.4f} (F1 {100 * f1['image_f1']:.1f}), pixel {f1['pixel']:.4f} "
                     f"(F1 {100 * f1['pixel_f1']:.1f}); {format_rates(thresholds['test']['f1_optimal'])}")
    return "\n".join(lines)


def recalibrate(run_dir: str | Path, target_fpr: float | None = None, device: str = "auto", progress: bool = True) -> dict:
    """``pfadseg calibrate``: set a run's thresholds again (e.g. for another target false-alarm rate)."""
    run = load_run(run_dir, device)
    config = run.config
    splits = load_splits(config.data)
    _, held_out = holdout_split(splits.train, config.calibration.holdout, config.seed)
    if not held_out:
        raise PfadsegError(f"{run.run_dir}: no normal images were held out of training (calibration.holdout is 0); "
                           "train with --set calibration.holdout=0.1 to calibrate")
    evaluation = None
    if splits.test:
        t = config.train
        evaluation = evaluate(run.model, splits.test, t.image_size, t.eval_size, run.precision, run.device, t.eval_batch_size,
                              splits.binarize_at, progress=progress)
    thresholds = calibrate(run.model, held_out, evaluation, config, run.precision, run.device, target_fpr)
    write_json_atomic(run.run_dir / THRESHOLDS_FILE, thresholds)
    if evaluation is not None:
        write_metrics(run.run_dir, evaluation)
    return thresholds


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


def test(
    run_dir: str | Path,
    data: DataConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    compile: bool = False,
) -> Evaluation:
    """Evaluate a run on its own test split (or on ``data``) and write ``metrics.json``.

    Metrics of another dataset go to ``metrics-<name>.json`` so that the run's own are kept.
    ``compile``: run the model through ``torch.compile``.
    """
    run = load_run(run_dir, device)
    own_data = data is None or data == run.config.data
    data = data or run.config.data
    splits = load_splits(data)
    if not splits.test:
        raise PfadsegError(f"{data.root}: the dataset has no test images")
    t = run.config.train
    evaluation = evaluate(run.model, splits.test, t.image_size, t.eval_size, run.precision, run.device,
                          t.eval_batch_size, splits.binarize_at, progress=progress, compile=compile)
    write_metrics(run.run_dir, evaluation, METRICS_FILE if own_data else f"metrics-{splits.name}.json")
    return evaluation


def load_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise PfadsegError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return run_config_from_yaml(run_dir / CONFIG_FILE)


def write_synthesis_preview(config: RunConfig, out: Path, rows: int = 8) -> Path:
    """A PNG grid of training images with their synthetic anomalies and masks."""
    from pfadseg.data.preview import synthesis_preview

    splits = load_splits(config.data)
    size = config.train.image_size
    generator = torch.Generator().manual_seed(config.seed)
    chosen = torch.randperm(len(splits.train), generator=generator)[:rows].sort().values
    images = load_images([splits.train[i] for i in chosen.tolist()], size).float().div_(255)
    images = normal_augmentation(config.data)(images, generator)
    synthesizer = AnomalySynthesizer(load_texture_source(config.data, size, config.seed), config.synthesis)
    grid = synthesis_preview(images, synthesizer, generator, rows)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    return out

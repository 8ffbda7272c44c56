"""Running a trained model over a test split and scoring it with the paper's metrics (docs/design.md §8–§9)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pfadseg.data.datasets import DataConfig, Sample, load_images, load_masks, load_splits
from pfadseg.data.images import ImageCache
from pfadseg.errors import PfadsegError
from pfadseg.fileio import atomic_path, write_json_atomic, write_text_atomic
from pfadseg.metrics import METRIC_KEYS, evaluate_maps
from pfadseg.models import PFADSeg
from pfadseg.progress import progress_bar
from pfadseg.rundir import METRICS_FILE, load_run
from pfadseg.thresholds import decision_rates, load_thresholds, thresholds_file
from pfadseg.training.runtime import Precision, compile_fixed_batch, to_device


@dataclass
class Evaluation:
    """Maps, scores and metrics of one test split, all at the evaluation size."""

    samples: list[Sample]
    maps: np.ndarray  # (N, S, S) float32, segmentation output
    scores: np.ndarray  # (N,) image scores
    student_teacher_maps: np.ndarray  # (N, S, S) float32, the distillation-only diagnostic map
    student_teacher_scores: np.ndarray
    masks: np.ndarray  # (N, S, S) bool
    metrics: dict[str, float]
    student_teacher_metrics: dict[str, float]


@torch.no_grad()
def infer(
    model: PFADSeg,
    images: torch.Tensor,
    precision: Precision,
    device: torch.device,
    output_size: int,
    batch_size: int = 16,
    progress: bool = False,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (N,3,H,W) → segmentation maps and scores, student–teacher maps and scores, on the CPU.

    ``compile``: run the model through ``torch.compile`` (faster for many images; compiling takes minutes).
    """
    model.eval()
    size = (output_size, output_size)
    forward = compile_fixed_batch(model.forward_with_diagnostic, batch_size) if compile else model.forward_with_diagnostic
    maps, scores, st_maps, st_scores = [], [], [], []
    bar = progress_bar(len(images), "evaluate", "images", enabled=progress)
    for start in range(0, len(images), batch_size):
        x = to_device(images[start : start + batch_size], device).float().div_(255)
        x = x.contiguous(memory_format=precision.memory_format())
        with precision.autocast(device):
            anomaly_map, score, st_map, st_score = forward(x, size)
        maps.append(anomaly_map[:, 0].cpu())
        scores.append(score.cpu())
        st_maps.append(st_map[:, 0].cpu())
        st_scores.append(st_score.cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(maps), torch.cat(scores), torch.cat(st_maps), torch.cat(st_scores)


def evaluate(
    model: PFADSeg,
    samples: list[Sample],
    image_size: int,
    eval_size: int,
    precision: Precision,
    device: torch.device,
    batch_size: int = 16,
    binarize_at: int = 128,
    cache: ImageCache | None = None,
    progress: bool = True,
    compile: bool = False,
) -> Evaluation:
    """Score every test sample; ground truth at ``eval_size`` (bilinear resize, threshold 0.5)."""
    cache = ImageCache() if cache is None else cache
    images = load_images(samples, image_size, cache)
    masks = load_masks(samples, eval_size, cache, binarize_at=binarize_at)[:, 0].numpy()
    outputs = infer(model, images, precision, device, eval_size, batch_size, progress, compile)
    maps, scores, st_maps, st_scores = (tensor.numpy() for tensor in outputs)
    labels = np.array([s.label for s in samples])
    return Evaluation(
        samples=samples,
        maps=maps,
        scores=scores,
        student_teacher_maps=st_maps,
        student_teacher_scores=st_scores,
        masks=masks,
        metrics=evaluate_maps(maps, masks, scores, labels),
        student_teacher_metrics=evaluate_maps(st_maps, masks, st_scores, labels),
    )


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table in percent, one row per named metrics dict."""
    names = {"image_auroc": "img AUROC", "pixel_auroc": "pix AUROC", "pixel_ap": "pix AP", "aupro": "AUPRO", "iap": "IAP", "iap90": "IAP@90"}
    width = max(len(r) for r in rows) + 2
    lines = [" " * width + "".join(f"{names[k]:>11}" for k in METRIC_KEYS)]
    for label, metrics in rows.items():
        lines.append(f"{label:<{width}}" + "".join(f"{100 * metrics[k]:>11.2f}" for k in METRIC_KEYS))
    return "\n".join(lines)


def save_maps(evaluation: Evaluation, out_dir: Path) -> None:
    """Each map as float32 ``.npy`` at ``DIR/<type>/<stem>.npy`` plus ``DIR/scores.csv``."""
    out_dir = Path(out_dir)
    for sample, anomaly_map in zip(evaluation.samples, evaluation.maps):
        with atomic_path(out_dir / sample.defect_type / f"{sample.image_path.stem}.npy") as tmp:
            with tmp.open("wb") as f:
                np.save(f, anomaly_map.astype(np.float32))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "score", "label"])
    for sample, score in zip(evaluation.samples, evaluation.scores):
        writer.writerow([sample.rel_path, f"{float(score):.9g}", sample.label])
    write_text_atomic(out_dir / "scores.csv", buf.getvalue())


def write_metrics(run_dir: Path, evaluation: Evaluation, name: str = METRICS_FILE, precision: str = "fp32") -> None:
    """``metrics.json``: the six metrics (fractions), the student–teacher diagnostic, and what the
    run's OK/NG thresholds for ``precision`` decide on these test images (when the run has them)."""
    labels = np.array([s.label for s in evaluation.samples], dtype=bool)
    payload = {**evaluation.metrics, "student_teacher": evaluation.student_teacher_metrics, "precision": precision}
    if precision == "fp32" or (Path(run_dir) / thresholds_file(precision)).is_file():
        payload["decisions"] = decision_rates(evaluation.scores, labels, load_thresholds(run_dir, precision)["image"])
    write_json_atomic(run_dir / name, payload)


def evaluate_run(
    run_dir: str | Path,
    data: DataConfig | None = None,
    device: str = "auto",
    progress: bool = True,
    compile: bool = False,
    precision: str = "fp32",
) -> Evaluation:
    """Evaluate a run on its own test split (or on ``data``) and write ``metrics.json``.

    Metrics of another dataset go to ``metrics-<name>.json``, of another precision than fp32 (the
    decision precision) to ``metrics-<precision>.json``, so that the run's own are kept.
    ``compile``: run the model through ``torch.compile``.
    """
    run = load_run(run_dir, device, precision)
    own_data = data is None or data == run.config.data
    data = data or run.config.data
    splits = load_splits(data)
    if not splits.test:
        raise PfadsegError(f"{data.root}: the dataset has no test images")
    recipe = run.config.train
    evaluation = evaluate(run.model, splits.test, recipe.image_size, recipe.eval_size, run.precision, run.device,
                          recipe.eval_batch_size, splits.binarize_at, progress=progress, compile=compile)
    name = "metrics" + ("" if own_data else f"-{splits.name}") + ("" if precision == "fp32" else f"-{precision}")
    write_metrics(run.run_dir, evaluation, f"{name}.json", precision)
    return evaluation

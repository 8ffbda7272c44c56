"""Running a trained model over a test split and scoring it with the paper's metrics (docs/design.md §8–§9)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pfadseg.config import evaluation_geometry
from pfadseg.data.datasets import DataConfig, Sample, load_images, load_masks, load_scaled_images, load_splits
from pfadseg.data.images import ImageCache, native_size, resize_map
from pfadseg.data.tiling import Layout, aspect_shape, layout_score, stitch_tiles, stitched_scores
from pfadseg.errors import PfadsegError
from pfadseg.fileio import atomic_path, write_json_atomic, write_text_atomic
from pfadseg.metrics import METRIC_KEYS, auroc_by_type, evaluate_maps
from pfadseg.models import PFADSeg
from pfadseg.progress import progress_bar
from pfadseg.rundir import METRICS_FILE, load_run
from pfadseg.thresholds import decision_rates, load_thresholds, thresholds_file
from pfadseg.training.runtime import Precision, compile_fixed_batch, to_device


@dataclass
class Evaluation:
    """Maps, scores and metrics of one test split, all at the evaluation size.

    ``maps``, ``scores`` and ``metrics`` are the output branch's (the one that decides); ``branches``
    holds every map the model computes (segmentation, student–teacher, and kNN and fused with a memory bank).
    """

    samples: list[Sample]
    output: str  # the name of the output branch
    branches: dict[str, BranchResult]
    masks: Maps  # bool, on the evaluation grid

    @property
    def maps(self) -> Maps:
        return self.branches[self.output].maps

    @property
    def scores(self) -> np.ndarray:
        return self.branches[self.output].scores

    @property
    def metrics(self) -> dict[str, float]:
        return self.branches[self.output].metrics

    @property
    def branch_metrics(self) -> dict[str, dict[str, float]]:
        return {name: branch.metrics for name, branch in self.branches.items()}


@dataclass
class BranchResult:
    """One branch's maps (float32, on the evaluation grid), image scores (N,) and the six metrics."""

    maps: Maps
    scores: np.ndarray
    metrics: dict[str, float]


#: What the model reads for a list of samples: uint8 (N, 3, S, S) in the `square` geometry, RGB uint8 arrays
#: (H, W, 3) at the size their layout scales them to in the `tiles` and `aspect` geometries.
Inputs = torch.Tensor | list[np.ndarray]


def load_inputs(samples: list[Sample], image_size: int, layout: Layout | None, cache: ImageCache | None = None) -> Inputs:
    """The model's inputs for ``samples``: whole images at ``image_size``² (`square`), or scaled for their ``layout``."""
    return load_images(samples, image_size, cache) if layout is None else load_scaled_images(samples, layout, cache)


def input_batches(images: Inputs, layout: Layout | None, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 batches (B, 3, h, w) of whole squared images, or of every tile of every image (one image per batch in `aspect`)."""
    if layout is None:
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for image in images:
        boxes = layout.boxes(*image.shape[:2])
        for start in range(0, len(boxes), batch_size):
            yield torch.from_numpy(layout.tiles(image, boxes[start : start + batch_size])).permute(0, 3, 1, 2)


#: Maps of several images: an (N, H, W) stack, or a list of (H_i, W_i) maps when their sizes differ.
Maps = np.ndarray | list[np.ndarray]
Shape = tuple[int, int]


def eval_shapes(samples: list[Sample], geometry: str, eval_size: int) -> list[Shape] | None:
    """Each sample's (height, width) for the pixel metrics: None for `square` (eval_size² for all, the papers'
    protocol), the image's aspect with eval_size² pixels for `aspect`, its own size for `native`."""
    if geometry == "square":
        return None
    shapes = []
    for sample in samples:
        width, height = native_size(sample.image_path)
        shapes.append((height, width) if geometry == "native" else aspect_shape(height, width, eval_size * eval_size))
    return shapes


def as_maps(arrays: list[np.ndarray]) -> Maps:
    """Per-image arrays as :data:`Maps`: one stack when they all have one shape, else the list."""
    return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays


def _at_shapes(maps: np.ndarray, shapes: list[Shape] | None) -> Maps:
    """(N, S, S) maps resized to each image's shape."""
    if shapes is None or all(shape == maps.shape[1:] for shape in shapes):
        return maps
    return as_maps([resize_map(m, shape) for m, shape in zip(maps, shapes)])


@torch.no_grad()
def infer(
    model: PFADSeg,
    images: Inputs,
    precision: Precision,
    device: torch.device,
    output_size: int,
    batch_size: int = 16,
    progress: bool = False,
    compile: bool = False,
    layout: Layout | None = None,
    shapes: list[Shape] | None = None,
) -> dict[str, tuple[Maps, np.ndarray]]:
    """Every branch's maps and scores (N,) float32 of ``images`` (see :data:`Inputs`), by branch name.

    Maps are S × S (S = ``output_size``), or at each image's ``shapes`` when given. ``compile``: run the model
    through ``torch.compile`` (faster for many images; compiling takes minutes). ``layout``: the `tiles` or `aspect`
    geometry, each image's tiles' maps stitched (see :func:`_infer_layout`).
    """
    model.eval()
    if layout is not None:
        return _infer_layout(model, images, layout, precision, device, output_size, batch_size, progress, shapes)
    size = (output_size, output_size)
    forward = compile_fixed_batch(model.forward_branches, batch_size) if compile else model.forward_branches
    parts: list[list[torch.Tensor]] = []
    bar = progress_bar(len(images), "evaluate", "images", enabled=progress)
    for start in range(0, len(images), batch_size):
        x = to_device(images[start : start + batch_size], device).float().div_(255)
        x = x.contiguous(memory_format=precision.memory_format())
        with precision.autocast(device):
            outputs = forward(x, size)
        parts.append([o[:, 0].float().cpu() if o.dim() == 4 else o.float().cpu() for o in outputs])
        bar.update(len(x))
    bar.close()
    merged = [torch.cat(column).numpy() for column in zip(*parts)]
    return {name: (_at_shapes(merged[2 * i], shapes), merged[2 * i + 1]) for i, name in enumerate(model.branches)}


def _infer_layout(model: PFADSeg, images: list[np.ndarray], layout: Layout, precision: Precision, device: torch.device,
                  output_size: int, batch_size: int, progress: bool, shapes: list[Shape] | None) -> dict[str, tuple[Maps, np.ndarray]]:
    """:func:`infer` in the `tiles` or `aspect` geometry: one image at a time, its tiles in batches (memory bounded by one
    image; in `aspect`, the image is its one tile).

    Every branch's score is the top-k mean of its stitched map at the image's aspect with S² pixels, except the fused
    one's, which combines the segmentation and kNN scores as the fusion does (:func:`layout_score`); the maps are
    resized to ``shapes`` (default S × S).
    """
    names, maps, scores = model.branches, [], []
    fused_parts = [names.index(name) for name in ("fused", "segmentation", "knn")] if model.fusion is not None else None

    def run(batch: np.ndarray) -> np.ndarray:  # uint8 tiles → every branch's map at the tile's size
        x = to_device(torch.from_numpy(batch).permute(0, 3, 1, 2), device).float().div_(255)
        with precision.autocast(device):
            outputs = model.forward_branches(x.contiguous(memory_format=precision.memory_format()), tuple(x.shape[-2:]))
        return torch.cat(outputs[0::2], dim=1).float().cpu().numpy()

    bar = progress_bar(len(images), "evaluate", "images", enabled=progress)
    for n, image in enumerate(images):
        stitched = stitch_tiles(image, layout, run, batch_size, channels=len(names))
        scores.append(stitched_scores(stitched, output_size, model.config.top_k))
        if fused_parts is not None:
            scores[-1][fused_parts[0]] = layout_score(stitched[fused_parts], output_size, model.config.top_k, model.fusion.score_weight)
        shape = (output_size, output_size) if shapes is None else shapes[n]
        maps.append([resize_map(channel, shape) for channel in stitched])
        bar.update(1)
    bar.close()
    stacked_scores = np.stack(scores)
    return {name: (as_maps([m[i] for m in maps]), stacked_scores[:, i]) for i, name in enumerate(names)}


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
    layout: Layout | None = None,
    eval_geometry: str = "square",
) -> Evaluation:
    """Score every test sample with every branch (in the geometry of ``layout`` when given); ground truth on the grid of
    ``eval_geometry`` (see :func:`eval_shapes`; bilinear resize, threshold 0.5)."""
    cache = ImageCache() if cache is None else cache
    images = load_inputs(samples, image_size, layout, cache)
    shapes = eval_shapes(samples, eval_geometry, eval_size)
    masks = load_eval_masks(samples, eval_size, shapes, cache, binarize_at)
    labels = np.array([s.label for s in samples])
    branches = {}
    for name, (maps, scores) in infer(model, images, precision, device, eval_size, batch_size, progress, compile, layout,
                                      shapes).items():
        branches[name] = BranchResult(maps, scores, evaluate_maps(maps, masks, scores, labels))
    return Evaluation(samples=samples, output=model.output_branch, branches=branches, masks=masks)


def load_eval_masks(samples: list[Sample], eval_size: int, shapes: list[Shape] | None, cache: ImageCache,
                    binarize_at: int = 128) -> Maps:
    """Ground truth at eval_size² (``shapes`` None) or at each sample's shape; all-zero for good images."""
    if shapes is None:
        return load_masks(samples, eval_size, cache, binarize_at=binarize_at)[:, 0].numpy()
    return as_maps([load_masks([sample], shape, cache, binarize_at=binarize_at)[0, 0].numpy() for sample, shape in zip(samples, shapes)])


BRANCH_LABELS = {"fused": "fused map", "segmentation": "segmentation map", "knn": "kNN map", "student_teacher": "student-teacher map"}


def branches_table(evaluation: Evaluation) -> str:
    """Every branch's metrics in percent, the output branch first and marked; then the output's image AUROC by defect
    type when there are several types."""
    order = [evaluation.output] + [b for b in BRANCH_LABELS if b in evaluation.branches and b != evaluation.output]
    table = format_metrics_table({BRANCH_LABELS[b] + (" (output)" if b == evaluation.output and len(order) > 2 else ""):
                                  evaluation.branches[b].metrics for b in order})
    by_type = auroc_by_type(evaluation.scores, [s.label for s in evaluation.samples], [s.defect_type for s in evaluation.samples])
    if len(by_type) < 2:
        return table
    return table + "\nimage AUROC by defect type: " + ", ".join(f"{kind} {100 * value:.2f}" for kind, value in by_type.items())


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
    """``metrics.json``: the output's six metrics (fractions), its image AUROC per defect type (each type against the
    good images), every branch's metrics under ``branches``, and what the run's OK/NG thresholds for ``precision``
    decide on these test images (when the run has them)."""
    labels = np.array([s.label for s in evaluation.samples], dtype=bool)
    by_type = auroc_by_type(evaluation.scores, labels, [s.defect_type for s in evaluation.samples])
    payload = {**evaluation.metrics, "image_auroc_by_type": by_type, "output": evaluation.output,
               "branches": evaluation.branch_metrics, "precision": precision}
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
                          recipe.eval_batch_size, splits.binarize_at, progress=progress, compile=compile,
                          layout=run.config.data.layout(recipe.image_size), eval_geometry=evaluation_geometry(run.config))
    name = "metrics" + ("" if own_data else f"-{splits.name}") + ("" if precision == "fp32" else f"-{precision}")
    write_metrics(run.run_dir, evaluation, f"{name}.json", precision)
    return evaluation

"""OK/NG thresholds from normal images held out of training, and the F1-optimal ones on labelled test data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom

from pfadseg.config import RunConfig, evaluation_geometry
from pfadseg.data.datasets import Sample, holdout_split, load_splits
from pfadseg.data.images import ImageCache
from pfadseg.errors import PfadsegError
from pfadseg.evaluate import Evaluation, eval_shapes, evaluate, infer, load_inputs, write_metrics
from pfadseg.fileio import write_json_atomic
from pfadseg.metrics import pixels
from pfadseg.models import PFADSeg
from pfadseg.rundir import load_run
from pfadseg.thresholds import decision_rates, f1_threshold, format_rates, fpr_threshold, thresholds_file
from pfadseg.training.runtime import Precision

#: A test false-alarm count this unlikely at the target rate (binomial tail) means the threshold does not hold there.
SURPRISE = 0.01


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
    """Thresholds at the target false-alarm rate on held-out normal images, and the F1-optimal ones on labelled test data.

    ``evaluation`` must come from the same ``precision``: the test-split figures judge these thresholds.
    """
    recipe = config.train
    fpr = config.calibration.target_fpr if target_fpr is None else target_fpr
    layout = config.data.layout(recipe.image_size)
    shapes = eval_shapes(held_out, evaluation_geometry(config), recipe.eval_size)
    maps, scores = infer(model, load_inputs(held_out, recipe.image_size, layout, cache), precision, device, recipe.eval_size,
                         recipe.eval_batch_size, layout=layout, shapes=shapes)[model.output_branch]
    result: dict = {"image": fpr_threshold(scores, fpr), "pixel": fpr_threshold(pixels(maps), fpr), "target_fpr": fpr,
                    "precision": precision.name, "calibration_images": [s.rel_path for s in held_out],
                    "smallest_image_fpr": 1 / len(held_out)}
    if evaluation is not None:
        labels = np.array([s.label for s in evaluation.samples], dtype=bool)
        image_f1, image_best = f1_threshold(evaluation.scores, labels)
        pixel_f1, pixel_best = f1_threshold(pixels(evaluation.maps), pixels(evaluation.masks))
        result["f1_optimal"] = {"image": image_f1, "image_f1": image_best, "pixel": pixel_f1, "pixel_f1": pixel_best}
        result["test"] = {"calibrated": decision_rates(evaluation.scores, labels, result["image"]),
                          "f1_optimal": decision_rates(evaluation.scores, labels, image_f1)}
    return result


def calibration_warnings(thresholds: dict) -> list[str]:
    """What a user must know before trusting the image threshold: a target the held-out images cannot resolve,
    and a test false-alarm rate far above the target."""
    warnings = []
    n, target = len(thresholds["calibration_images"]), thresholds["target_fpr"]
    if target < 1 / n:
        warnings.append(f"{n} held-out normal images resolve false-alarm rates down to 1/{n} = {100 / n:.1f} % only: at the "
                        f"{100 * target:g} % target the image threshold sits just above the highest held-out score, as for any "
                        f"target below {100 / n:.1f} %; hold out more normal images (--holdout) or add training images")
    rates = thresholds.get("test", {}).get("calibrated")
    if rates and rates["good"]:
        k, m = rates["false_alarms"], rates["good"]
        if k / m > target and binom.sf(k - 1, m, target) < SURPRISE:
            warnings.append(f"WARNING: on the test split the image threshold flags {k} of {m} good images ({100 * k / m:.1f} %), far "
                            f"above the {100 * target:g} % target (chance {binom.sf(k - 1, m, target):.1e} if the target held): the "
                            "held-out images do not represent these good images; do not use this threshold on a line as it is")
    return warnings


def format_calibration(thresholds: dict) -> str:
    """The calibration in a few readable lines, warnings first."""
    lines = [f"pfadseg: warning: {w}" for w in calibration_warnings(thresholds)]
    lines.append(f"thresholds at {100 * thresholds['target_fpr']:g} % target false alarms, set on {len(thresholds['calibration_images'])} "
                 f"held-out normal images in {thresholds['precision']}: image {thresholds['image']:.4f}, pixel {thresholds['pixel']:.4f}")
    if "test" in thresholds:
        f1 = thresholds["f1_optimal"]
        lines.append(f"  measured on the test split: {format_rates(thresholds['test']['calibrated'])}")
        lines.append(f"  F1-optimal on the test split: image {f1['image']:.4f} (F1 {100 * f1['image_f1']:.1f}), pixel {f1['pixel']:.4f} "
                     f"(F1 {100 * f1['pixel_f1']:.1f}); {format_rates(thresholds['test']['f1_optimal'])}")
    return "\n".join(lines)


def recalibrate(run_dir: str | Path, target_fpr: float | None = None, device: str = "auto", progress: bool = True,
                precision: str = "fp32") -> dict:
    """``pfadseg calibrate``: set a run's thresholds again (another target false-alarm rate, or thresholds for ``precision``)."""
    run = load_run(run_dir, device, precision)
    config = run.config
    splits = load_splits(config.data)
    _, held_out = holdout_split(splits.train, config.calibration.holdout, config.seed)
    if not held_out:
        raise PfadsegError(f"{run.run_dir}: no normal images were held out of training (calibration.holdout is 0); "
                           "train with --holdout 0.1 to calibrate")
    evaluation = None
    if splits.test:
        recipe = config.train
        evaluation = evaluate(run.model, splits.test, recipe.image_size, recipe.eval_size, run.precision, run.device, recipe.eval_batch_size,
                              splits.binarize_at, progress=progress, layout=config.data.layout(recipe.image_size),
                              eval_geometry=evaluation_geometry(config))
    thresholds = calibrate(run.model, held_out, evaluation, config, run.precision, run.device, target_fpr)
    write_json_atomic(run.run_dir / thresholds_file(precision), thresholds)
    if evaluation is not None and precision == "fp32":
        write_metrics(run.run_dir, evaluation)
    return thresholds

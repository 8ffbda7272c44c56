"""Fusion rules compared on runs that have a memory bank: the segmentation and kNN branches combined in several ways.

    python benchmarks/fusion_rules.py RUN [RUN ...] [--out FILE.json]

Every rule takes its statistics from the run's held-out normal images only (as the model's fusion does); the
test split only measures. Rules: each branch alone; ``sum`` (the model's: segmentation + kNN × std ratio, the
ranking of the mean of the two z-scores); ``sum, map score`` (the same map, the image score taken from it rather
than summed from the branches' scores); ``z-max`` (the larger z-score); ``q99-mean`` (each branch divided by
its held-out 99th percentile, then averaged); ``tail-z sum`` (each branch minus its held-out median, divided by its
held-out 99th percentile minus the median, then added). Prints the six metrics per rule and run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pfadseg.data.datasets import holdout_split, load_images, load_masks, load_splits
from pfadseg.evaluate import format_metrics_table, infer
from pfadseg.metrics import evaluate_maps
from pfadseg.rundir import load_run


def branch_outputs(run, samples) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Segmentation, kNN and (the model's own) fused maps and scores of ``samples`` at the evaluation size, fp32."""
    recipe = run.config.train
    images = load_images(samples, recipe.image_size)
    out = infer(run.model, images, run.precision, run.device, recipe.eval_size, recipe.eval_batch_size, progress=True)
    return {name: (maps.astype(np.float64), scores.astype(np.float64)) for name, (maps, scores) in out.items()
            if name in ("segmentation", "knn", "fused")}


def rules(normal: dict, test: dict, image_score) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every rule's (maps, scores) on the test split, with statistics from the held-out normal images.

    ``image_score`` maps (N, 1, H, W) maps to (N,) scores, as the model does."""
    (seg_m, seg_s), (knn_m, knn_s) = test["segmentation"], test["knn"]
    (n_seg_m, n_seg_s), (n_knn_m, n_knn_s) = normal["segmentation"], normal["knn"]
    z = lambda x, ref: (x - ref.mean()) / max(ref.std(), 1e-12)  # noqa: E731
    q = lambda x, ref: x / max(np.quantile(ref, 0.99), 1e-12)  # noqa: E731
    tail = lambda x, ref: (x - np.median(ref)) / max(np.quantile(ref, 0.99) - np.median(ref), 1e-12)  # noqa: E731
    return {
        "segmentation": (seg_m, seg_s),
        "knn": (knn_m, knn_s),
        "sum (model)": test["fused"],
        "sum, map score": (test["fused"][0], image_score(test["fused"][0])),
        "z-max": (np.maximum(z(seg_m, n_seg_m), z(knn_m, n_knn_m)), np.maximum(z(seg_s, n_seg_s), z(knn_s, n_knn_s))),
        "q99-mean": ((q(seg_m, n_seg_m) + q(knn_m, n_knn_m)) / 2, (q(seg_s, n_seg_s) + q(knn_s, n_knn_s)) / 2),
        "tail-z sum": (tail(seg_m, n_seg_m) + tail(knn_m, n_knn_m), tail(seg_s, n_seg_s) + tail(knn_s, n_knn_s)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args()
    results = {}
    for run_dir in args.runs:
        run = load_run(run_dir, "auto", "fp32")
        if run.model.fusion is None:
            raise SystemExit(f"{run_dir}: the run has no fused output (pfadseg bank --run {run_dir}, with held-out images)")
        config = run.config
        splits = load_splits(config.data)
        _, held_out = holdout_split(splits.train, config.calibration.holdout, config.seed)
        masks = load_masks(splits.test, config.train.eval_size, binarize_at=splits.binarize_at)[:, 0].numpy()
        labels = np.array([s.label for s in splits.test])
        normal, test = branch_outputs(run, held_out), branch_outputs(run, splits.test)
        map_score = lambda maps: run.model.image_score(torch.from_numpy(maps)).double().numpy()  # noqa: E731
        table = {name: evaluate_maps(m.astype(np.float32), masks, s, labels) for name, (m, s) in rules(normal, test, map_score).items()}
        results[str(run_dir)] = table
        print(f"\n{run_dir} ({len(held_out)} held-out normal images, {len(splits.test)} test images)")
        print(format_metrics_table(table))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

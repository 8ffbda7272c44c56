"""Recompute the six metrics from ``pfadseg test --save-maps`` output, independently of pfadseg.metrics.

Usage: python benchmarks/recompute_metrics.py MAPS_DIR DATA_ROOT CATEGORY [--size 256]

Reads ``MAPS_DIR/scores.csv`` and ``MAPS_DIR/<type>/<stem>.npy``, the MVTec-layout ground truth
(``DATA_ROOT/CATEGORY/ground_truth/<type>/<stem>_mask.png``, resized bilinearly and thresholded at
0.5), and computes: image/pixel AUROC and pixel AP with scikit-learn; AUPRO@0.3 with the algorithm
of MVTec AD's official evaluation script (per-region overlap accumulated over all pixels sorted by
score); IAP and IAP@90 directly from their definition, one full pass over the pixels per instance.
Prints the metrics as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score


def read_mask(path: Path, size: int) -> np.ndarray:
    mask = (np.asarray(Image.open(path).convert("L")) >= 128).astype(np.float32)
    resized = Image.fromarray(mask, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(resized) >= 0.5


def mvtec_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """MVTec AD's compute_pro + trapezoid(x_max=limit) / limit."""
    structure = np.ones((3, 3), dtype=int)
    fp_changes = np.zeros(maps.shape, dtype=np.uint32)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    num_ok = 0
    num_regions = 0
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure)
        num_regions += n
        ok = labeled == 0
        num_ok += ok.sum()
        fp_changes[i][ok] = 1
        for k in range(1, n + 1):
            region = labeled == k
            pro_changes[i][region] = 1.0 / region.sum()
    order = np.argsort(maps.ravel(), kind="mergesort")[::-1]
    scores = maps.ravel()[order]
    fprs = np.cumsum(fp_changes.ravel()[order], dtype=np.float64) / num_ok
    pros = np.cumsum(pro_changes.ravel()[order]) / num_regions
    keep = np.append(np.diff(scores) != 0, True)  # last index of each run of equal scores
    fprs = np.concatenate([[0.0], fprs[keep], [1.0]])
    pros = np.concatenate([[0.0], np.minimum(pros[keep], 1.0), [1.0]])
    # trapezoid up to the limit, interpolating at the limit
    inside = fprs <= limit
    area = np.trapz(pros[inside], fprs[inside]) if hasattr(np, "trapz") else np.trapezoid(pros[inside], fprs[inside])
    last = np.flatnonzero(inside)[-1]
    if fprs[last] < limit and last + 1 < len(fprs):
        x0, x1, y0, y1 = fprs[last], fprs[last + 1], pros[last], pros[last + 1]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_lim) / 2
    return float(area / limit)


def iap_by_definition(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    structure = np.zeros((3, 3, 3), dtype=int)
    structure[1] = 1  # 8-connected within an image; components never cross images
    labeled, n = ndimage.label(masks, structure)
    scores = []
    for k in range(1, n + 1):
        values = np.sort(maps[labeled == k])[::-1]
        scores.append(values[len(values) // 2])
    scores = np.sort(np.array(scores))
    flat_maps, flat_masks = maps.ravel(), masks.ravel()
    precisions = []
    for t in scores:
        positive = flat_maps >= t
        precisions.append(np.count_nonzero(positive & flat_masks) / np.count_nonzero(positive))
    monotone = np.maximum.accumulate(np.array(precisions))
    recalls = 1 - np.arange(n) / n
    ascending_first = [i for i in range(n - 1, -1, -1) if recalls[i] >= 0.9][0]
    return float(monotone.mean()), float(monotone[ascending_first])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps_dir", type=Path)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("category")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with (args.maps_dir / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    maps, masks = [], []
    for row in rows:
        kind, name = Path(row["image"]).parent.name, Path(row["image"]).stem
        maps.append(np.load(args.maps_dir / kind / f"{name}.npy"))
        gt = args.data_root / args.category / "ground_truth" / kind / f"{name}_mask.png"
        masks.append(read_mask(gt, args.size) if kind != "good" else np.zeros((args.size, args.size), bool))
    maps_a, masks_a = np.stack(maps).astype(np.float64), np.stack(masks)
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    iap, iap90 = iap_by_definition(maps_a, masks_a)
    print(json.dumps({
        "image_auroc": roc_auc_score(labels, scores),
        "pixel_auroc": roc_auc_score(masks_a.ravel(), maps_a.ravel()),
        "pixel_ap": average_precision_score(masks_a.ravel(), maps_a.ravel()),
        "aupro": mvtec_aupro(maps_a, masks_a),
        "iap": iap,
        "iap90": iap90,
    }, indent=2))


if __name__ == "__main__":
    main()

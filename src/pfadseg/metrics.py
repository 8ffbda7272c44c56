"""Evaluation metrics of docs/design.md §9: image/pixel AUROC, pixel AP, AUPRO@0.3, IAP and IAP@90.

Everything is exact and vectorised: the pixel scores of the whole test set are sorted once and
every curve is read off cumulative sums over that single sort, one point per *distinct* score
(pixels with equal scores are thresholded together).  NumPy and SciPy only.

Conventions shared by all functions:

* A pixel / image is "positive at threshold t" when its score is >= t.
* Ground-truth regions / instances are the 8-connected components of each image's mask
  (``scipy.ndimage.label`` with a 3x3 block of ones, exactly as MVTec AD's official
  ``generic_util.compute_pro``).  Components never join across images.
* A metric that is undefined for the given data (only one class present, no defect region,
  no normal pixel) raises ``ValueError``; NaN scores raise ``ValueError`` too.  No metric
  silently returns NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["auroc", "average_precision", "aupro", "iap", "evaluate_maps", "roc_curve", "pr_curve", "METRIC_KEYS"]

#: Keys of :func:`evaluate_maps`' result, in reporting order.
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")

# 8-connectivity inside each image of an (N, H, W) stack and no connection between images:
# the 3x3 ones block of MVTec's code placed in the middle slice of a 3x3x3 structure.
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = True


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_scores(scores: ArrayLike, what: str) -> np.ndarray:
    """Return ``scores`` as a floating array (float32 kept as is), rejecting NaN."""
    arr = np.asarray(scores)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{what} contains NaN")
    return arr


def _as_binary(labels: ArrayLike, what: str) -> np.ndarray:
    """Return ``labels`` as a bool array; only bool or the values 0/1 are accepted."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(
            f"{what} must be boolean or contain only 0 and 1 (threshold soft masks at 0.5 first)"
        )
    return arr.astype(bool)


def _check_same_shape(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what_a} shape {a.shape} does not match {what_b} shape {b.shape}")


def _as_map_stack(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate maps and masks as (N, H, W) stacks (a single (H, W) pair counts as N = 1)."""
    maps_arr = _as_scores(maps, "maps")
    masks_arr = _as_binary(masks, "masks")
    if maps_arr.ndim == 2:
        maps_arr, masks_arr = maps_arr[None], masks_arr[None]
    if maps_arr.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {maps_arr.shape}")
    _check_same_shape(maps_arr, masks_arr, "maps", "masks")
    return maps_arr, masks_arr


def _maps_and_regions(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated maps and masks with the masks' 8-connected regions labelled per image (0 = normal, 1..R unique).

    A list of maps of different sizes (images evaluated at their own aspect) is flattened into one
    1-D array of pixels; every metric below reads pixels and region labels only, never positions.
    """
    if isinstance(maps, (list, tuple)) and len({np.shape(m) for m in maps}) > 1:
        if len(maps) != len(masks):
            raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
        pairs = [_as_map_stack(m, k) for m, k in zip(maps, masks)]
        labels, total = [], 0
        for _, mask in pairs:
            image_labels, count = _label_regions(mask)
            labels.append(np.where(image_labels > 0, image_labels + total, 0).ravel())
            total += count
        flat = lambda arrays: np.concatenate([a.ravel() for a in arrays])  # noqa: E731
        return flat(m for m, _ in pairs), flat(k for _, k in pairs), np.concatenate(labels), total
    maps_arr, masks_arr = _as_map_stack(maps, masks)
    return (maps_arr, masks_arr, *_label_regions(masks_arr))


def pixels(maps: ArrayLike) -> np.ndarray:
    """Every pixel of an (N, H, W) stack, or of a list of maps of different sizes, as one 1-D array."""
    if isinstance(maps, (list, tuple)):
        return np.concatenate([np.asarray(m).ravel() for m in maps]) if len(maps) else np.zeros(0, np.float32)
    return np.asarray(maps).ravel()


def _require_both_classes(n_pos: int, n_neg: int, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "positive" if n_pos else "negative"
        raise ValueError(
            f"{what} is undefined: only one class ({present}) is present in the labels"
        )


# --------------------------------------------------------------------------------------------
# The one sort everything is read from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sweep:
    """A descending threshold sweep over scores with binary labels.

    Entry k corresponds to the k-th largest *distinct* score ``thresholds[k]`` and holds counts
    over all elements with score >= thresholds[k].  Taking one entry per distinct score is what
    makes every metric tie-aware: equal scores are always switched on together.
    """

    order: np.ndarray  # permutation sorting the flattened scores in descending order
    sorted_scores: np.ndarray  # the flattened scores in that order
    group_ends: np.ndarray  # position (in sorted order) of the last element of each tie group
    thresholds: np.ndarray  # distinct scores, descending
    n_above: np.ndarray  # number of elements with score >= threshold
    tps: np.ndarray  # number of positive elements with score >= threshold

    @classmethod
    def build(cls, scores: np.ndarray, labels: np.ndarray) -> _Sweep:
        flat = scores.ravel()
        order = np.ascontiguousarray(np.argsort(flat)[::-1])
        sorted_scores = flat[order]
        # Last index of each run of equal scores (keep_mask of MVTec's compute_pro).
        changes = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
        group_ends = np.append(changes, flat.size - 1)
        tps = np.cumsum(labels.ravel()[order], dtype=np.int64)[group_ends]
        thresholds = sorted_scores[group_ends]
        return cls(order, sorted_scores, group_ends, thresholds, group_ends + 1, tps)

    @property
    def fps(self) -> np.ndarray:
        """Number of negative elements with score >= threshold."""
        return self.n_above - self.tps

    def cumulative(self, weights: np.ndarray) -> np.ndarray:
        """Sum of ``weights`` over the elements with score >= threshold, per threshold."""
        return np.cumsum(weights.ravel()[self.order])[self.group_ends]

    def index_of(self, values: np.ndarray) -> np.ndarray:
        """Sweep index of each value, which must be one of the scores (exact match)."""
        # thresholds is descending, so search the negated (ascending) array.
        return np.searchsorted(-self.thresholds, -np.asarray(values), side="left")


# --------------------------------------------------------------------------------------------
# AUROC and AP
# --------------------------------------------------------------------------------------------


def _auroc_from(sweep: _Sweep, what: str) -> float:
    """Area under the ROC curve by the trapezoid rule over the distinct-threshold points.

    Done on integer counts (area in units of n_pos * n_neg) so the only rounding is the final
    division.  A tie group containing both classes gives a diagonal segment, i.e. such pairs
    count one half, which is what scikit-learn's ``roc_auc_score`` does.
    """
    tps, fps = sweep.tps, sweep.fps
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    _require_both_classes(n_pos, n_neg, what)
    tp_prev = np.concatenate(([0], tps[:-1]))
    fp_step = np.diff(fps, prepend=0)
    twice_area = int(np.sum(fp_step * (tps + tp_prev)))
    return twice_area / (2 * n_pos * n_neg)


def _average_precision_from(sweep: _Sweep, what: str) -> float:
    """AP = sum over thresholds of (recall step) x (precision), as scikit-learn defines it.

    No interpolation: each distinct threshold contributes its own precision weighted by the
    number of positives it adds.
    """
    tps = sweep.tps
    n_pos, n_neg = int(tps[-1]), int(sweep.fps[-1])
    _require_both_classes(n_pos, n_neg, what)
    precision = tps / sweep.n_above
    return float(np.sum(np.diff(tps, prepend=0) * precision) / n_pos)


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact, tie-aware area under the ROC curve (equals ``sklearn.metrics.roc_auc_score``).

    ``scores`` and ``labels`` may have any (equal) shape; they are flattened.  Raises
    ``ValueError`` if only one class is present.
    """
    scores_arr, labels_arr = _as_scores(scores, "scores"), _as_binary(labels, "labels")
    _check_same_shape(scores_arr, labels_arr, "scores", "labels")
    return _auroc_from(_Sweep.build(scores_arr, labels_arr), "AUROC")


def average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact, tie-aware average precision (equals ``sklearn.metrics.average_precision_score``).

    Raises ``ValueError`` if only one class is present (scikit-learn would warn and return a
    meaningless value when there are no positives).
    """
    scores_arr, labels_arr = _as_scores(scores, "scores"), _as_binary(labels, "labels")
    _check_same_shape(scores_arr, labels_arr, "scores", "labels")
    return _average_precision_from(_Sweep.build(scores_arr, labels_arr), "average precision")


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold (descending), starting from (0, 0): the curve :func:`auroc` integrates."""
    scores_arr, labels_arr = _as_scores(scores, "scores"), _as_binary(labels, "labels")
    _check_same_shape(scores_arr, labels_arr, "scores", "labels")
    sweep = _Sweep.build(scores_arr, labels_arr)
    n_pos, n_neg = int(sweep.tps[-1]), int(sweep.fps[-1])
    _require_both_classes(n_pos, n_neg, "ROC curve")
    return np.concatenate(([0.0], sweep.fps / n_neg)), np.concatenate(([0.0], sweep.tps / n_pos))


def auroc_by_type(scores: ArrayLike, labels: ArrayLike, types: list[str]) -> dict[str, float]:
    """Image AUROC of each defect type's images against all good ones (label 0), by type name, in name order."""
    scores_arr, labels_arr = _as_scores(scores, "scores").ravel(), _as_binary(labels, "labels").ravel()
    good = ~labels_arr
    kinds = np.array(types)
    return {kind: auroc(np.concatenate([scores_arr[good], scores_arr[kinds == kind]]),
                        np.concatenate([np.zeros(good.sum(), bool), np.ones((kinds == kind).sum(), bool)]))
            for kind in sorted(set(kinds[labels_arr]))}


def pr_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, threshold) at every distinct threshold, highest first: the points :func:`average_precision` sums.

    A pixel or image counts as positive at threshold t when its score is >= t.
    """
    scores_arr, labels_arr = _as_scores(scores, "scores"), _as_binary(labels, "labels")
    _check_same_shape(scores_arr, labels_arr, "scores", "labels")
    sweep = _Sweep.build(scores_arr, labels_arr)
    _require_both_classes(int(sweep.tps[-1]), int(sweep.fps[-1]), "PR curve")
    return sweep.tps / sweep.tps[-1], sweep.tps / sweep.n_above, sweep.thresholds


# --------------------------------------------------------------------------------------------
# Ground-truth regions
# --------------------------------------------------------------------------------------------


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of every mask in an (N, H, W) stack.

    Returns the label stack (0 = normal pixel, 1..R = region, unique over the whole stack)
    and R.  One ``ndimage.label`` call on the stack with a structure that connects only within
    a slice is the same as labelling each image with MVTec's 3x3 ones structure.
    """
    labels, n_regions = ndimage.label(masks, structure=_STACK_STRUCTURE)
    return labels, int(n_regions)


# --------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid-rule area under y(x) from x[0] to x_max (MVTec's ``trapezoid``).

    ``x`` must be non-decreasing with x[0] <= x_max <= x[-1].  If x_max falls strictly between
    two points, y at x_max is linearly interpolated and the partial trapezoid is added.
    """
    n_in = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:n_in], y[:n_in]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    x0, y0 = x[n_in - 1], y[n_in - 1]
    if x0 < x_max:
        x1, y1 = x[n_in], y[n_in]
        y_at_limit = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (y0 + y_at_limit) / 2 * (x_max - x0)
    return area


def _aupro_from(
    sweep: _Sweep, region_labels: np.ndarray, n_regions: int, fpr_limit: float
) -> float:
    """AUPRO from a sweep whose labels are the defect masks (negatives = normal pixels).

    PRO(t) = mean over regions of |region & (map >= t)| / |region|, obtained as the cumulative
    sum of per-pixel weights 1 / (size of the pixel's region) divided by the number of regions.
    FPR(t) = normal pixels with map >= t over all normal pixels (sweep.fps).
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if n_regions == 0:
        raise ValueError("AUPRO is undefined: the masks contain no defect region")
    fps = sweep.fps
    n_normal = int(fps[-1])
    if n_normal == 0:
        raise ValueError("AUPRO is undefined: there is no normal (mask 0) pixel")

    sizes = np.bincount(region_labels.ravel(), minlength=n_regions + 1)
    inverse_size = np.zeros(n_regions + 1)
    inverse_size[1:] = 1.0 / sizes[1:]
    pro = sweep.cumulative(inverse_size[region_labels]) / n_regions
    np.clip(pro, None, 1.0, out=pro)  # guard against round-off in the cumulative sum
    fpr = fps / n_normal

    # Curve from (0, 0) to (1, 1), as in MVTec's compute_pro.
    fpr = np.concatenate(([0.0], fpr, [1.0]))
    pro = np.concatenate(([0.0], pro, [1.0]))
    return _trapezoid_up_to(fpr, pro, fpr_limit) / fpr_limit


def aupro(maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD).

    Follows MVTec AD's official ``compute_pro`` + ``trapezoid``: regions are the 8-connected
    components of each mask; every distinct map value is a threshold; the PRO(FPR) curve starts
    at (0, 0), ends at (1, 1), is integrated with the trapezoid rule up to exactly
    ``fpr_limit`` (interpolating the PRO at the limit) and divided by ``fpr_limit``, so the
    result lies in [0, 1].  FPR is over all normal pixels of all images, including good ones.
    (MVTec casts FPRs to float32; here they stay float64, a difference below 1e-7.)

    ``maps``: float (N, H, W); ``masks``: bool or 0/1 (N, H, W).
    """
    maps_arr, masks_arr, region_labels, n_regions = _maps_and_regions(maps, masks)
    sweep = _Sweep.build(maps_arr, masks_arr)
    return _aupro_from(sweep, region_labels, n_regions, fpr_limit)


# --------------------------------------------------------------------------------------------
# IAP
# --------------------------------------------------------------------------------------------


def _instance_scores(sweep: _Sweep, region_labels: np.ndarray, n_regions: int) -> np.ndarray:
    """Score of each instance: its pixel score at position floor(n/2) in descending order.

    Why floor(n/2): with the instance's n scores sorted descending v_0 >= ... >= v_{n-1}, at
    threshold t = v_k at least k + 1 pixels are >= t, and at any t above v_k at most k are.
    "More than half" means a count > n/2, whose smallest integer is floor(n/2) + 1, so the
    highest threshold at which more than half of the pixels are positive is v_{floor(n/2)}.
    Examples: n = 4, [9, 8, 7, 6] -> position 2 -> 7 (3 of 4 pixels >= 7; at 8 only 2 of 4,
    exactly half); n = 3, [9, 8, 7] -> position 1 -> 8 (2 of 3 pixels >= 8).

    The pixels are taken in the sweep's descending order and stably grouped by instance, so
    each instance's scores are already sorted descending: no per-instance sort.
    """
    ranked_labels = region_labels.ravel()[sweep.order]
    in_region = ranked_labels > 0
    labels = ranked_labels[in_region]
    grouped = sweep.sorted_scores[in_region][np.argsort(labels, kind="stable")]
    sizes = np.bincount(labels, minlength=n_regions + 1)[1:]
    starts = np.cumsum(sizes) - sizes
    return grouped[starts + sizes // 2]


def _iap_from(sweep: _Sweep, region_labels: np.ndarray, n_regions: int) -> tuple[float, float]:
    """IAP and IAP@90 from a sweep whose labels are the defect masks (docs/design.md §9)."""
    if n_regions == 0:
        raise ValueError("IAP is undefined: the masks contain no defect instance")
    s = np.sort(_instance_scores(sweep, region_labels, n_regions))  # ascending s_0..s_{N-1}
    # Pixel precision of (map >= s_i) over all test pixels; s_i is a pixel score, so there is
    # at least one pixel >= s_i and its sweep entry is found exactly.
    at = sweep.index_of(s)
    precision = sweep.tps[at] / sweep.n_above[at]
    # Running maximum from i = 0 (recall 1) upwards (towards lower recall).
    monotone = np.maximum.accumulate(precision)
    # Recall at i is 1 - i/N; read ascending, the first recall >= 0.9 is at the largest i with
    # 1 - i/N >= 0.9, i.e. 10 i <= N, i = N // 10 (integer arithmetic, no float edge cases).
    return float(monotone.mean()), float(monotone[n_regions // 10])


def iap(maps: ArrayLike, masks: ArrayLike) -> tuple[float, float]:
    """Instance average precision (IAP) and IAP@90 as defined in docs/design.md §9 (DeSTSeg).

    Instances are the 8-connected components of the masks over the whole test set.  With the
    N instance scores (see :func:`_instance_scores`) sorted ascending s_0 <= ... <= s_{N-1},
    threshold t = s_i has recall 1 - i/N (ties are not merged) and precision = pixel precision
    of (map >= t) over all test pixels.  Precision is made monotone by a running maximum from
    i = 0 upwards; IAP is the mean of the N monotone precisions and IAP@90 the monotone
    precision at the first recall >= 0.9 in ascending recall order.

    Returns ``(iap, iap90)`` as fractions.  Raises ``ValueError`` if there is no instance.
    """
    maps_arr, masks_arr, region_labels, n_regions = _maps_and_regions(maps, masks)
    sweep = _Sweep.build(maps_arr, masks_arr)
    return _iap_from(sweep, region_labels, n_regions)


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def evaluate_maps(
    maps: ArrayLike,
    masks: ArrayLike,
    image_scores: ArrayLike,
    image_labels: ArrayLike,
) -> dict[str, float]:
    """All six metrics of docs/design.md §9 for one category's test set, as fractions.

    ``maps``: float (N, H, W) anomaly maps, or a list of (H_i, W_i) maps of different sizes;
    ``masks``: bool or 0/1 ground truth of the same shapes
    (already resized to the evaluation size and thresholded); ``image_scores``: (N,) floats;
    ``image_labels``: (N,) bool or 0/1 (1 = defective).

    The pixel scores are sorted once and shared by pixel AUROC, pixel AP, AUPRO and IAP.
    Raises ``ValueError`` when a metric is undefined: image AUROC needs both good and defective
    images, the pixel metrics need at least one defect pixel and one normal pixel.
    """
    maps_arr, masks_arr, region_labels, n_regions = _maps_and_regions(maps, masks)
    scores_arr = _as_scores(image_scores, "image_scores").ravel()
    labels_arr = _as_binary(image_labels, "image_labels").ravel()
    n_images = len(maps) if maps_arr.ndim == 1 else maps_arr.shape[0]
    if scores_arr.shape != (n_images,) or labels_arr.shape != (n_images,):
        raise ValueError(
            f"image_scores {scores_arr.shape} and image_labels {labels_arr.shape} must have "
            f"one entry per map ({n_images})"
        )

    image_auroc = _auroc_from(_Sweep.build(scores_arr, labels_arr), "image AUROC")
    pixel_sweep = _Sweep.build(maps_arr, masks_arr)
    pixel_auroc = _auroc_from(pixel_sweep, "pixel AUROC")  # checks both pixel classes first
    pixel_ap = _average_precision_from(pixel_sweep, "pixel AP")
    pro_area = _aupro_from(pixel_sweep, region_labels, n_regions, 0.3)
    instance_ap, instance_ap90 = _iap_from(pixel_sweep, region_labels, n_regions)
    return {
        "image_auroc": float(image_auroc),
        "pixel_auroc": float(pixel_auroc),
        "pixel_ap": float(pixel_ap),
        "aupro": float(pro_area),
        "iap": instance_ap,
        "iap90": instance_ap90,
    }

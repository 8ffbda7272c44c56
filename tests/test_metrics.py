"""Tests for pfadseg.metrics: sklearn agreement, hand-computed fixtures, brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pfadseg.metrics import (
    METRIC_KEYS,
    aupro,
    auroc,
    average_precision,
    evaluate_maps,
    iap,
    pr_curve,
    roc_curve,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# --------------------------------------------------------------------------------------------
# AUROC / AP against scikit-learn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_auroc_and_ap_match_sklearn(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    labels = rng.random(n) < rng.uniform(0.05, 0.6)
    scores = rng.normal(size=n) + 0.8 * labels
    if decimals is not None:  # many ties, including ties across the two classes
        scores = np.round(scores, decimals)
    assert auroc(scores, labels) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), abs=1e-10
    )
    assert average_precision(scores, labels) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-10
    )


@pytest.mark.parametrize("decimals", [None, 1])
def test_roc_and_pr_curves_match_sklearn(decimals: int | None) -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(500) < 0.3
    scores = rng.normal(size=500) + labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    fpr, tpr = roc_curve(scores, labels)
    ref_fpr, ref_tpr, _ = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    recall, precision, thresholds = pr_curve(scores, labels)
    ref_precision, ref_recall, ref_thresholds = sklearn_metrics.precision_recall_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(thresholds, ref_thresholds[::-1])
    # scikit-learn lists thresholds ascending and appends the (recall 0, precision 1) end point.
    np.testing.assert_allclose(recall, ref_recall[:-1][::-1])
    np.testing.assert_allclose(precision, ref_precision[:-1][::-1])
    with pytest.raises(ValueError):
        roc_curve(scores, np.zeros(500, bool))


def test_auroc_ap_float32_and_integer_labels() -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random((5, 8, 8)) < 0.3).astype(np.uint8)
    scores = np.round(rng.random((5, 8, 8)), 2).astype(np.float32) + 0.1 * labels
    ref_auc = sklearn_metrics.roc_auc_score(labels.ravel(), scores.ravel())
    ref_ap = sklearn_metrics.average_precision_score(labels.ravel(), scores.ravel())
    assert auroc(scores, labels) == pytest.approx(ref_auc, abs=1e-10)
    assert average_precision(scores, labels) == pytest.approx(ref_ap, abs=1e-10)


def test_auroc_all_tied_is_one_half() -> None:
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5


@pytest.mark.parametrize("fn", [auroc, average_precision])
def test_single_class_raises(fn) -> None:
    with pytest.raises(ValueError, match="only one class"):
        fn([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="only one class"):
        fn([0.1, 0.2, 0.3], [1, 1, 1])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="0 and 1"):
        auroc([0.1, 0.2], [0, 0.7])
    with pytest.raises(ValueError, match="shape"):
        auroc([0.1, 0.2, 0.3], [0, 1])


# --------------------------------------------------------------------------------------------
# AUPRO: hand-computed fixtures
# --------------------------------------------------------------------------------------------

# Two 3x4 images.  Image A has two regions of different size (8-connected components):
#   R1 = {(0,0)}                 size 1
#   R2 = {(1,2), (1,3), (2,3)}   size 3
# Image B is good.  Normal pixels: 12 - 4 = 8 in A plus 12 in B = 20, so each normal pixel
# moves the FPR by 1/20 = 0.05 and FPR 0.3 = 6 normal pixels.
MASK_A = np.array(
    [
        [1, 0, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 0, 1],
    ],
    dtype=bool,
)
PRO_MASKS = np.stack([MASK_A, np.zeros((3, 4), dtype=bool)])


def test_aupro_two_regions_limit_on_a_point() -> None:
    # Thresholds (descending) and the curve point after each one:
    #   t=0.9: R1's pixel          -> PRO = (1 + 0)/2 = 1/2,      FPR = 0
    #   t=0.8: 1 normal (B)        -> PRO = 1/2,                  FPR = 1/20 = 0.05
    #   t=0.7: 2 of R2's 3 pixels  -> PRO = (1 + 2/3)/2 = 5/6,    FPR = 0.05
    #   t=0.6: 2 normals (A, B)    -> PRO = 5/6,                  FPR = 3/20 = 0.15
    #   t=0.5: R2's last pixel     -> PRO = 1,                    FPR = 0.15
    #   t=0.4: 3 normals           -> PRO = 1,                    FPR = 6/20 = 0.3 (the limit)
    #   t=0.0: the other 14        -> PRO = 1,                    FPR = 1
    # Area up to 0.3 (vertical steps add nothing):
    #   [0, 0.05]:    1/2 * 0.05 = 1/40
    #   [0.05, 0.15]: 5/6 * 0.10 = 1/12
    #   [0.15, 0.3]:  1   * 0.15 = 3/20
    #   total = 3/120 + 10/120 + 18/120 = 31/120;  / 0.3  ->  31/36
    a = np.array(
        [
            [0.9, 0.6, 0.4, 0.0],
            [0.0, 0.0, 0.7, 0.7],
            [0.0, 0.0, 0.0, 0.5],
        ]
    )
    b = np.zeros((3, 4))
    b[0, 0] = 0.8
    b[0, 1] = 0.6
    b[1, 0] = b[1, 1] = 0.4
    # A: normals 0.6, 0.4 (and 6 zeros); B: 0.8, 0.6, 0.4, 0.4 (and 8 zeros).
    # t=0.4 adds A's 0.4 + B's two 0.4 = 3 normals, as listed above.
    maps = np.stack([a, b])
    assert aupro(maps, PRO_MASKS) == pytest.approx(31 / 36, abs=1e-12)


def test_aupro_limit_between_thresholds_interpolates_and_merges_ties() -> None:
    # Same masks; now R2's last pixel ties with 4 normal pixels at t=0.5, so the curve goes in
    # ONE step (ties thresholded together) from (0.15, 5/6) to (0.35, 1), across the limit:
    #   t=0.9: R1                  -> (0,    1/2)
    #   t=0.8: 1 normal            -> (0.05, 1/2)
    #   t=0.7: 2 pixels of R2      -> (0.05, 5/6)
    #   t=0.6: 2 normals           -> (0.15, 5/6)
    #   t=0.5: last R2 + 4 normals -> (0.35, 1)
    #   t=0.0: 13 normals          -> (1,    1)
    # PRO at FPR 0.3 by interpolation: 5/6 + (1 - 5/6) * (0.3 - 0.15)/(0.35 - 0.15)
    #                                 = 5/6 + 1/6 * 3/4 = 23/24
    # Area: 1/40 + 1/12 + (5/6 + 23/24)/2 * 0.15 = 24/960 + 80/960 + 129/960 = 233/960
    # Normalised: 233/960 / 0.3 = 233/288.
    a = np.array(
        [
            [0.9, 0.6, 0.5, 0.0],
            [0.0, 0.0, 0.7, 0.7],
            [0.0, 0.0, 0.0, 0.5],
        ]
    )
    b = np.zeros((3, 4))
    b[0, 0] = 0.8
    b[0, 1] = 0.6
    b[1, 0] = b[1, 1] = b[1, 2] = 0.5
    maps = np.stack([a, b])
    assert aupro(maps, PRO_MASKS) == pytest.approx(233 / 288, abs=1e-12)
    # Integrating the whole curve: 1/40 + 1/12 + (5/6 + 1)/2 * 0.2 + 1 * 0.65
    #   = 3/120 + 10/120 + 22/120 + 78/120 = 113/120
    assert aupro(maps, PRO_MASKS, fpr_limit=1.0) == pytest.approx(113 / 120, abs=1e-12)


def test_aupro_uses_8_connectivity() -> None:
    # One 3x3 image; mask pixels (0,0), (1,1), (1,2): 8-connected -> ONE region of size 3
    # (4-connectivity would give {(0,0)} and {(1,1),(1,2)}).  6 normal pixels.
    #   t=0.9: (0,0)            -> PRO = 1/3 (4-conn would say 1/2), FPR = 0
    #   t=0.5: 3 normals        -> FPR = 1/2
    #   t=0.1: (1,1), (1,2)     -> PRO = 1
    #   t=0.0: 3 normals        -> FPR = 1
    # Area to 0.3 = 1/3 * 0.3  ->  normalised 1/3  (4-connectivity would give 1/2).
    mask = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    amap = np.array([[0.9, 0.5, 0.5], [0.5, 0.1, 0.1], [0.0, 0.0, 0.0]])
    assert aupro(amap[None], mask[None]) == pytest.approx(1 / 3, abs=1e-12)


def test_aupro_perfect_and_undefined() -> None:
    masks = PRO_MASKS
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no defect region"):
        aupro(np.random.default_rng(0).random((2, 3, 4)), np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks.astype(float), masks, fpr_limit=0.0)


# --------------------------------------------------------------------------------------------
# Random test sets and brute-force references (deliberately loop-based, per-image labelling)
# --------------------------------------------------------------------------------------------


def _random_test_set(seed: int, n: int = 5, h: int = 16, w: int = 16, decimals: int | None = 2):
    """Maps correlated with blobby masks of several irregular regions; image 0 is good."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((n, h, w)), sigma=(0, 1.2, 1.2))
    masks = noise > np.quantile(noise, 0.85)
    masks[0] = False
    maps = rng.random((n, h, w)) * 0.7 + 0.4 * masks
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


def _regions_per_image(masks: np.ndarray) -> list[np.ndarray]:
    """One boolean (N, H, W) array per region, labelling each image separately (MVTec style)."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        for k in range(1, count + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = labelled == k
            regions.append(region)
    return regions


def _brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    regions = _regions_per_image(masks)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        positive = maps >= t
        fprs.append(np.count_nonzero(positive & normal) / np.count_nonzero(normal))
        overlaps = [np.count_nonzero(positive & r) / np.count_nonzero(r) for r in regions]
        pros.append(np.mean(overlaps))
    fprs.append(1.0)
    pros.append(1.0)
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 2])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed: int, decimals: int | None, limit: float) -> None:
    maps, masks = _random_test_set(seed, decimals=decimals)
    assert len(_regions_per_image(masks)) >= 3
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(
        _brute_force_aupro(maps, masks, limit), abs=1e-10
    )


def _brute_force_iap(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    regions = _regions_per_image(masks)
    scores = []
    for r in regions:
        values = maps[r]
        # Highest threshold (among the instance's own values) with MORE than half its pixels >= t.
        scores.append(max(t for t in values if np.count_nonzero(values >= t) > len(values) / 2))
    scores.sort()
    n = len(scores)
    monotone, best = [], 0.0
    for i in range(n):
        positive = maps >= scores[i]
        best = max(best, np.count_nonzero(positive & masks) / np.count_nonzero(positive))
        monotone.append(best)
    recalls = [1 - i / n for i in range(n)]
    iap90 = next(monotone[i] for i in reversed(range(n)) if recalls[i] >= 0.9)
    return float(np.mean(monotone)), iap90


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_iap_matches_brute_force(seed: int, decimals: int | None) -> None:
    maps, masks = _random_test_set(seed + 100, n=8, decimals=decimals)
    got = iap(maps, masks)
    ref = _brute_force_iap(maps, masks)
    assert got == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# IAP: hand-computed fixtures
# --------------------------------------------------------------------------------------------


def test_iap_more_than_half_rule_and_ties() -> None:
    # Image A (3x4), two instances:
    #   I1 = 2x2 block top-left, n = 4, scores desc [0.9, 0.8, 0.7, 0.6] -> position 2 -> 0.7
    #        (at 0.7, 3 of 4 pixels are >= t; at 0.8 only 2 of 4 = half, not MORE than half)
    #   I2 = column 3, n = 3, scores desc [0.95, 0.5, 0.3] -> position 1 -> 0.5
    #        (at 0.5, 2 of 3 are >= t; at 0.95 only 1 of 3)
    #   normals: (0,2)=0.75, (1,2)=0.55, row 2 cols 0-2 = 0
    # Image B (3x4): I3 = single pixel (1,1)=0.7 -> 0.7 (ties with I1: not merged)
    #   normals: (0,0)=0.8, (0,1)=0.72, the rest 0
    # Instance scores ascending: s0=0.5, s1=0.7, s2=0.7; recall 1, 2/3, 1/3.
    #   t=0.5: TP = 4 (I1) + 2 (I2) + 1 (I3) = 7; FP = 0.75, 0.55, 0.8, 0.72 = 4 -> 7/11
    #   t=0.7: TP = 3 (I1) + 1 (I2) + 1 (I3) = 5; FP = 0.75, 0.8, 0.72 = 3      -> 5/8
    #   t=0.7 again (tie, own recall 1/3)                                       -> 5/8
    # Running max from i=0: [7/11, 7/11, 7/11] (5/8 < 7/11) -> IAP = 7/11
    # IAP@90: recalls ascending 1/3, 2/3, 1 -> first >= 0.9 is i=0 -> 7/11
    a = np.array(
        [
            [0.9, 0.8, 0.75, 0.95],
            [0.7, 0.6, 0.55, 0.5],
            [0.0, 0.0, 0.0, 0.3],
        ]
    )
    mask_a = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]], dtype=bool)
    b = np.zeros((3, 4))
    b[0, 0], b[0, 1], b[1, 1] = 0.8, 0.72, 0.7
    mask_b = np.zeros((3, 4), dtype=bool)
    mask_b[1, 1] = True
    maps, masks = np.stack([a, b]), np.stack([mask_a, mask_b])
    got_iap, got_iap90 = iap(maps, masks)
    assert got_iap == pytest.approx(7 / 11, abs=1e-12)
    assert got_iap90 == pytest.approx(7 / 11, abs=1e-12)
    assert (got_iap, got_iap90) == pytest.approx(_brute_force_iap(maps, masks), abs=1e-12)


def test_iap90_index_and_running_max() -> None:
    # One 1x20 image: 10 single-pixel instances at even columns 0, 2, ..., 18 with scores
    # 0.1, 0.2, ..., 1.0 (not 8-adjacent: an odd column lies between them); the 10 normal
    # pixels at odd columns score 0 except column 1 = 0.95 and column 3 = 0.15.
    # s_i = (i+1)/10, recall 1 - i/10.  TP at s_i = 10 - i.  FP: 0.95 counts for i <= 8,
    # 0.15 only for i = 0.
    #   i:    0     1     2    3    4    5    6    7    8    9
    #   P:  10/12  9/10  8/9  7/8  6/7  5/6  4/5  3/4  2/3  1/1
    #   mono: 5/6, then 9/10 for i = 1..8, then 1
    # IAP = (5/6 + 8 * 9/10 + 1) / 10 = (25 + 216 + 30) / 300 = 271/300
    # IAP@90: recall read ascending 0.1, 0.2, ..., first >= 0.9 is 0.9 at i = 1 -> 9/10
    amap = np.zeros((1, 1, 20))
    mask = np.zeros((1, 1, 20), dtype=bool)
    amap[0, 0, 0::2] = np.arange(1, 11) / 10
    mask[0, 0, 0::2] = True
    amap[0, 0, 1], amap[0, 0, 3] = 0.95, 0.15
    got_iap, got_iap90 = iap(amap, mask)
    assert got_iap == pytest.approx(271 / 300, abs=1e-12)
    assert got_iap90 == pytest.approx(9 / 10, abs=1e-12)


def test_iap_undefined_without_instances() -> None:
    with pytest.raises(ValueError, match="no defect instance"):
        iap(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), dtype=bool))


# --------------------------------------------------------------------------------------------
# evaluate_maps
# --------------------------------------------------------------------------------------------


def _image_scores(maps: np.ndarray) -> np.ndarray:
    flat = np.sort(maps.reshape(len(maps), -1), axis=1)
    return flat[:, -100:].mean(axis=1)


def test_evaluate_maps_keys_ranges_and_consistency() -> None:
    maps, masks = _random_test_set(3, n=10, h=32, w=32)
    labels = masks.reshape(len(masks), -1).any(axis=1)
    scores = _image_scores(maps)
    result = evaluate_maps(maps, masks, scores, labels)
    assert tuple(result) == METRIC_KEYS
    for key, value in result.items():
        assert type(value) is float, key
        assert 0.0 <= value <= 1.0, key
    assert result["image_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))
    assert result["pixel_auroc"] == pytest.approx(
        sklearn_metrics.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-10
    )
    assert result["pixel_ap"] == pytest.approx(
        sklearn_metrics.average_precision_score(masks.ravel(), maps.ravel()), abs=1e-10
    )
    assert result["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert (result["iap"], result["iap90"]) == pytest.approx(iap(maps, masks), abs=1e-12)


def test_evaluate_maps_undefined_raises() -> None:
    maps, masks = _random_test_set(1, n=4)
    labels = masks.reshape(4, -1).any(axis=1)
    with pytest.raises(ValueError, match="image AUROC"):
        evaluate_maps(maps, masks, _image_scores(maps), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="pixel AUROC"):
        evaluate_maps(maps, np.zeros_like(masks), _image_scores(maps), labels)
    with pytest.raises(ValueError, match="one entry per map"):
        evaluate_maps(maps, masks, _image_scores(maps)[:3], labels[:3])


@pytest.mark.parametrize("seed", [0, 1])
def test_maps_of_different_sizes_score_as_their_pixels_and_regions_do(seed: int) -> None:
    """A list of maps of different sizes (images at their own aspect) gives the metrics of the same images in a stack.

    Transposing an image keeps its pixels and its 8-connected regions, so [A (h × w), B (w × h)] must score exactly as
    the stack [A, Bᵀ]; defects touching the images' shared edges check that no region spans two images.
    """
    rng = np.random.default_rng(seed)
    h, w = 9, 14
    maps = [rng.random((h, w)).round(2), rng.random((w, h)).round(2)]
    masks = [np.zeros((h, w), bool), np.zeros((w, h), bool)]
    masks[0][-3:, -4:] = True  # bottom-right corner of the first ...
    masks[1][:2, :3] = True  # ... top-left corner of the second
    masks[1][8:11, 5:] = True
    maps = [m + 0.5 * k for m, k in zip(maps, masks)]
    scores, labels = np.array([0.3, 0.7]), np.array([0, 1])
    ragged = evaluate_maps(maps, masks, scores, labels)
    stacked = evaluate_maps(np.stack([maps[0], maps[1].T]), np.stack([masks[0], masks[1].T]), scores, labels)
    assert ragged == pytest.approx(stacked, abs=1e-12)
    assert iap(maps, masks) == pytest.approx(iap(np.stack([maps[0], maps[1].T]), np.stack([masks[0], masks[1].T])))

"""OK/NG decision thresholds: the run's ``thresholds.json`` and how thresholds are set from scores.

NumPy only (no torch), so the ONNX prediction path can use it. A pixel or image is flagged
(NG, defective) when its score is >= the threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pfadseg.errors import PfadsegError
from pfadseg.metrics import pr_curve

THRESHOLDS_FILE = "thresholds.json"
#: Without calibration: 0.5 on the segmentation network's sigmoid output.
DEFAULT_THRESHOLDS = {"image": 0.5, "pixel": 0.5}


def thresholds_file(precision: str) -> str:
    """``thresholds.json`` for fp32 (the decision precision), ``thresholds-<precision>.json`` for another one."""
    return THRESHOLDS_FILE if precision == "fp32" else f"thresholds-{precision}.json"


def load_thresholds(run_dir: str | Path, precision: str = "fp32") -> dict[str, Any]:
    """The image and pixel thresholds for scores computed in ``precision``, and the precision they were set in.

    fp32 without a file (a run trained without held-out images): the 0.5 defaults. Another precision
    without its own file: an error saying how to set them. ``"precision"`` is None in a file written
    before thresholds recorded it.
    """
    path = Path(run_dir) / thresholds_file(precision)
    if not path.is_file():
        if precision != "fp32":
            raise PfadsegError(f"{run_dir}: no thresholds for {precision} scores; set them with "
                               f"`pfadseg calibrate --run {run_dir} --precision {precision}`, or predict in fp32")
        return {**DEFAULT_THRESHOLDS, "precision": "fp32"}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"image": float(data["image"]), "pixel": float(data["pixel"]), "precision": data.get("precision")}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PfadsegError(f"{path}: unreadable thresholds ({err})") from None


def fpr_threshold(normal_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold that flags at most ``target_fpr`` of these normal scores."""
    if not 0 <= target_fpr < 1:
        raise PfadsegError(f"target false-alarm rate must be in [0, 1), got {target_fpr}")
    ranked = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())[::-1]
    if ranked.size == 0:
        raise PfadsegError("no normal images to calibrate the thresholds on")
    allowed = int(np.floor(target_fpr * ranked.size + 1e-9))  # false alarms the target permits
    # Flag only what lies strictly above the (allowed+1)-th highest score.
    return float(np.nextafter(ranked[allowed], np.inf))


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the threshold with the highest F1 score on labelled data."""
    recall, precision, thresholds = pr_curve(scores, labels)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def decision_rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """What a threshold does on labelled images: false alarms among the good, recall among the defective."""
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    labels = np.asarray(labels, dtype=bool)
    good, bad = int((~labels).sum()), int(labels.sum())
    false_alarms, found = int((flagged & ~labels).sum()), int((flagged & labels).sum())
    return {"good": good, "false_alarms": false_alarms, "false_alarm_rate": false_alarms / good if good else None,
            "defective": bad, "detected": found, "recall": found / bad if bad else None}


def format_rates(rates: dict[str, Any]) -> str:
    """``false alarms 1/20 (5.0 %), defect recall 60/63 (95.2 %)``."""
    parts = []
    if rates["good"]:
        parts.append(f"false alarms {rates['false_alarms']}/{rates['good']} ({100 * rates['false_alarm_rate']:.1f} %)")
    if rates["defective"]:
        parts.append(f"defect recall {rates['detected']}/{rates['defective']} ({100 * rates['recall']:.1f} %)")
    return ", ".join(parts)

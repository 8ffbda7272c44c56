"""``pfadseg benchmark``: train and evaluate model variants over datasets and seeds, and tabulate them.

Every run lives in ``OUT/runs/<dataset>-<variant>-s<seed>``: a finished run with the same
configuration is reused and an interrupted one resumed, so a benchmark can be stopped and started
again. After each run ``results.json``, ``results.md`` and ``report.html`` are rewritten with
everything finished so far.

Variants name Table 4's rows: ``destseg`` (the baseline), ``pfadseg`` (AFF + PCAR + RCM), or any
``+``-joined subset of ``aff``, ``pcar``, ``rcm`` added to the baseline (e.g. ``rcm+pcar``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pfadseg.checkpoint import MODEL_FILE
from pfadseg.config import (
    TRAIN_PRESETS,
    DataConfig,
    RunConfig,
    TrainConfig,
    default_bank,
    dump_yaml,
    from_dict,
    load_yaml,
    merge,
    parse_override,
    to_dict,
)
from pfadseg.environment import environment
from pfadseg.errors import PfadsegError
from pfadseg.evaluate import Evaluation, evaluate_run
from pfadseg.fileio import write_json_atomic, write_text_atomic
from pfadseg.metrics import pixels, pr_curve, roc_curve
from pfadseg.models.architecture import MODEL_PRESETS, ModelConfig
from pfadseg.report import gallery_cases, write_report
from pfadseg.results import RunRecord, averages, results_table, runs_table, summarize
from pfadseg.rundir import CHECKPOINT_FILE, RUN_INFO_FILE, absolute_paths, load_run_config
from pfadseg.thresholds import load_thresholds
from pfadseg.training.run import train

COMPONENTS = ("aff", "pcar", "rcm")
#: Table 4's seven rows, in the paper's order.
ABLATION_VARIANTS = ("destseg", "rcm", "aff", "pcar", "rcm+pcar", "aff+pcar", "pfadseg")
CURVE_POINTS = 200  # points kept per curve in results.json


def variant_config(name: str, teacher: str | None = None) -> ModelConfig:
    """The model of a variant name: the DeSTSeg baseline with the named components switched on."""
    if name == "destseg":
        parts: set[str] = set()
    elif name == "pfadseg":
        parts = set(COMPONENTS)
    else:
        parts = set(name.split("+"))
        unknown = parts - set(COMPONENTS)
        if unknown or not parts:
            raise PfadsegError(f"unknown model variant {name!r}: use destseg, pfadseg or a '+'-joined subset of {', '.join(COMPONENTS)}")
    base = MODEL_PRESETS["destseg"]
    config = replace(base, block=replace(base.block, aff="aff" in parts, pcar="pcar" in parts),
                     head=replace(base.head, kind="rcm" if "rcm" in parts else "aspp"))
    return config if teacher is None else replace(config, teacher=teacher)


@dataclass(frozen=True)
class BenchmarkDataset:
    """One dataset/category of a benchmark: ``key`` names its run directories, ``name`` its table rows."""

    key: str
    name: str
    data: DataConfig


def mvtec_datasets(root: str, categories: list[str]) -> list[BenchmarkDataset]:
    """MVTec-layout categories under one root."""
    return [BenchmarkDataset(f"{Path(root).name}-{c}", c, DataConfig(root=root, category=c)) for c in categories]


def dataset_from_yaml(path: str | Path) -> BenchmarkDataset:
    """A dataset described by a YAML file of DataConfig fields (e.g. benchmarks/magnetic_tile.yaml)."""
    path = Path(path)
    values = load_yaml(path)
    data = from_dict(DataConfig, values.get("data", values), prefix="data.")
    name = data.category or path.stem
    return BenchmarkDataset(name, name, data)


def _thin(x: np.ndarray, y: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """At most ``points`` evenly spaced points of a curve (first and last kept), rounded for JSON."""
    keep = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).round().astype(int))
    return {"x": np.round(x[keep], 5).tolist(), "y": np.round(y[keep], 5).tolist()}


def curves(evaluation: Evaluation) -> dict[str, dict[str, list[float]]]:
    """Image-level ROC and pixel-level PR curves of an evaluation, thinned for the report."""
    labels = np.array([s.label for s in evaluation.samples], dtype=bool)
    fpr, tpr = roc_curve(evaluation.scores, labels)
    recall, precision, _ = pr_curve(pixels(evaluation.maps), pixels(evaluation.masks))
    return {"image_roc": _thin(fpr, tpr), "pixel_pr": _thin(recall, precision)}


@dataclass
class BenchmarkResults:
    """The finished runs of a benchmark so far, and the files made from them in ``out``."""

    out: Path
    preset: str
    title: str = "pfadseg benchmark"
    records: list[RunRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, dataset: str, variant: str, seed: int, config: RunConfig, run_dir: Path, evaluation: Evaluation,
            gallery: str | None) -> None:
        """Record a finished run (and draw its best and worst cases when ``gallery`` names their file); rewrite every results file."""
        info = json.loads((run_dir / RUN_INFO_FILE).read_text(encoding="utf-8")) if (run_dir / RUN_INFO_FILE).is_file() else {}
        self.records.append(RunRecord(dataset, variant, seed, str(run_dir), info.get("seconds"), evaluation.metrics,
                                      evaluation.output, evaluation.branch_metrics, curves(evaluation), json.loads(json.dumps(to_dict(config)))))
        if gallery is not None:
            gallery_cases(evaluation, self.out / "gallery" / f"{gallery}.json", dataset, variant, seed, load_thresholds(run_dir)["image"])
        write_results(self.out, self.records, self.preset, time.perf_counter() - self.started, self.title)
        write_report(self.out)


def _run_config(dataset: BenchmarkDataset, variant: str, seed: int, preset: str, teacher: str | None,
                overrides: list[str], device: str) -> RunConfig:
    if preset not in TRAIN_PRESETS:
        raise PfadsegError(f"unknown training preset {preset!r}; known: {', '.join(TRAIN_PRESETS)}")
    config = RunConfig(model=variant_config(variant, teacher), train=TrainConfig(**TRAIN_PRESETS[preset]),
                       data=dataset.data, bank=default_bank(variant, preset), seed=seed, device=device)
    for text in overrides:
        config = merge(config, parse_override(text))
    return absolute_paths(config)


def _train_or_reuse(config: RunConfig, run_dir: Path, teacher_weights: str | None, progress: bool,
                    log: Callable[[str], None]) -> Evaluation:
    """Reuse a finished run with this exact configuration, resume an interrupted one, or train anew."""
    if (run_dir / MODEL_FILE).is_file() or (run_dir / CHECKPOINT_FILE).is_file():
        if load_run_config(run_dir) != config:
            raise PfadsegError(f"{run_dir}: holds a run with another configuration; remove it or choose another --out")
        if not (run_dir / CHECKPOINT_FILE).is_file():
            log(f"reusing the finished run {run_dir}")
            return evaluate_run(run_dir, device=config.device, progress=progress)
        result = train(config, run_dir, teacher_weights=teacher_weights, resume=True, progress=progress, log=log)
    else:
        result = train(config, run_dir, teacher_weights=teacher_weights, progress=progress, log=log)
    if result.evaluation is None:
        raise PfadsegError(f"{config.data.root}: the dataset has no test images to benchmark on")
    return result.evaluation


def run_benchmark(
    datasets: list[BenchmarkDataset],
    variants: list[str],
    seeds: list[int],
    preset: str,
    out: str | Path,
    *,
    teacher: str | None = None,
    teacher_weights: str | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[RunRecord]:
    """Train/evaluate every dataset × variant × seed; rewrite results.json/.md and report.html after each run."""
    out = Path(out)
    if not datasets or not variants or not seeds:
        raise PfadsegError("a benchmark needs at least one dataset, one model variant and one seed")
    configs = {(d.key, v, s): _run_config(d, v, s, preset, teacher, overrides or [], device)
               for d in datasets for v in variants for s in seeds}  # every name is checked before the first run
    results = BenchmarkResults(out, preset)
    total = len(configs)
    for number, ((key, variant, seed), config) in enumerate(configs.items(), 1):
        dataset = next(d for d in datasets if d.key == key)
        run_dir = out / "runs" / f"{key}-{variant}-s{seed}"
        log(f"\n== [{number}/{total}] {dataset.name} · {variant} · seed {seed}  →  {run_dir}")
        evaluation = _train_or_reuse(config, run_dir, teacher_weights, progress, log)
        first = variant == variants[0] and seed == seeds[0]
        results.add(dataset.name, variant, seed, config, run_dir, evaluation, gallery=key if first else None)
    log(f"\nbenchmark: {len(results.records)} runs in {(time.perf_counter() - results.started) / 60:.1f} min")
    log(results_table(results.records))
    log(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'report.html'}")
    return results.records


def write_results(out: Path, records: list[RunRecord], preset: str, seconds: float, title: str) -> None:
    """results.json (everything, curves included) and results.md (the tables, the first run's config, versions)."""
    env = environment()
    summary = summarize(records)
    payload = {"title": title, "preset": preset, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": seconds, "environment": env,
               "summary": summary, "averages": averages(summary), "runs": [vars(r) for r in records]}
    write_json_atomic(out / "results.json", payload)
    first = records[0]
    md = [f"# {title}: preset `{preset}`", "",
          f"Teacher `{first.config['model']['teacher']}`. Mean ± sample standard deviation over seeds, in percent. "
          "`min/run`: wall minutes of one run (data loading, training and evaluation).", "",
          results_table(records), "", "## Every run", "", runs_table(records), "",
          "## Configuration of the first run", "",
          "Other runs differ only in model variant, dataset and seed; each run's full configuration is in results.json "
          "and in its run directory's config.yaml.", "", "```yaml", dump_yaml(from_dict(RunConfig, first.config)).rstrip(), "```", "",
          "## Environment", "", "```json", json.dumps(env, indent=2), "```", ""]
    write_text_atomic(out / "results.md", "\n".join(md))

"""The Python API: the same operations as the ``pfadseg`` command, as functions.

    import pfadseg
    result = pfadseg.train("/data/mvtec_ad", "bottle", preset="fast", teacher="efficientnet_lite0", out="runs/bottle")
    print(result.metrics)
    detector = pfadseg.load("runs/bottle")
    prediction = detector.predict_file("new.png")      # .anomaly_map, .score, .is_anomalous
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pfadseg.config import RunConfig, merge, preset_config
from pfadseg.evaluate import Evaluation, evaluate_run, save_maps
from pfadseg.predict import Predictor, open_backend, predict_to_folder
from pfadseg.rundir import load_run_config
from pfadseg.training.run import TrainResult
from pfadseg.training.run import train as _train


def make_config(
    data: str | Path,
    category: str = "",
    *,
    model: str = "pfadseg",
    preset: str = "paper",
    teacher: str | None = None,
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """A run configuration: model preset + training preset + data, then nested ``overrides``."""
    config = preset_config(model, preset)
    config = merge(config, {"data": {"root": str(data), "category": category}, "seed": seed, "device": device})
    if teacher:
        config = merge(config, {"model": {"teacher": teacher}})
    return merge(config, overrides or {})


def train(
    data: str | Path,
    category: str = "",
    *,
    out: str | Path,
    model: str = "pfadseg",
    preset: str = "paper",
    teacher: str | None = None,
    teacher_weights: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """``pfadseg train``: train into ``out``; evaluates when the data has a test split."""
    config = make_config(data, category, model=model, preset=preset, teacher=teacher, seed=seed, device=device, overrides=overrides)
    return _train(config, out, teacher_weights=teacher_weights, progress=progress)


def resume(run_dir: str | Path, progress: bool = True) -> TrainResult:
    """``pfadseg train --resume``: continue an interrupted run from its last checkpoint."""
    return _train(load_run_config(run_dir), run_dir, resume=True, progress=progress)


def test(run_dir: str | Path, *, data: str | Path | None = None, category: str | None = None,
         save_maps_to: str | Path | None = None, device: str = "auto", progress: bool = True, compile: bool = False,
         precision: str = "fp32") -> Evaluation:
    """``pfadseg test``: metrics of a run on its test split (or on another MVTec-layout category)."""
    data_config = None
    if data is not None:
        own = load_run_config(run_dir).data
        data_config = replace(own, root=str(data), category=category or own.category)
    evaluation = evaluate_run(run_dir, data_config, device=device, progress=progress, compile=compile, precision=precision)
    if save_maps_to is not None:
        save_maps(evaluation, Path(save_maps_to))
    return evaluation


def load(model: str | Path, device: str = "auto", compile: bool = False, precision: str = "fp32") -> Predictor:
    """A run directory or an exported ``.onnx`` file, ready for inference (``predict_file``, ``predict_arrays``).

    ``compile``: run a run directory's model through ``torch.compile`` (minutes once, then about 1.7× faster on CPU).
    ``precision``: fp32 (decisions as the command line and the ONNX file make them) or bf16 (needs its own thresholds).
    """
    return Predictor(open_backend(model, device, compile=compile, precision=precision))


def predict(model: str | Path, inputs: list[str | Path], out: str | Path, *, device: str = "auto",
            batch_size: int = 8, progress: bool = True, compile: bool = False, precision: str = "fp32") -> str:
    """``pfadseg predict``: overlays, maps, masks and ``predictions.csv`` in ``out``; returns the summary line."""
    return predict_to_folder(model, [str(i) for i in inputs], Path(out), device=device, batch_size=batch_size, progress=progress,
                             compile=compile, precision=precision)

"""PFADSeg: anomaly detection and segmentation by teacher–student distillation plus a guided segmentation network.

The Python API (the same operations as the ``pfadseg`` command):

- ``train(data, category, out=..., preset=..., teacher=...)``: train a run; returns a ``TrainResult``
  (``.metrics``, ``.evaluation``, ``.run_dir``).
- ``resume(run_dir)``: continue an interrupted run from its last checkpoint.
- ``test(run_dir)``: evaluate a run on its test split (or another dataset); returns an ``Evaluation``.
- ``load(run_dir_or_onnx)``: a ``Predictor`` with ``predict_file(path)`` and ``predict_arrays(images, paths)``,
  each giving ``Prediction`` objects (``.anomaly_map`` at the image's size, ``.score``, ``.is_anomalous``).
- ``predict(model, inputs, out)``: overlays, maps, masks and ``predictions.csv`` for files and folders.
- ``make_config(data, category, preset=..., overrides=...)``: a ``RunConfig`` to edit before training.

They are imported on first use, so that ``import pfadseg`` stays light (the ONNX path needs no torch).
"""

from __future__ import annotations

from typing import Any

from pfadseg.version import __version__

__all__ = ["__version__", "train", "resume", "test", "load", "predict", "make_config"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from pfadseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'pfadseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)

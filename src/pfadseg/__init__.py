"""PFADSeg: anomaly detection and segmentation by teacher–student distillation plus a guided segmentation network.

The functions of :mod:`pfadseg.api` (``train``, ``resume``, ``test``, ``load``, ``predict``) are
available here; they are imported on first use so that ``import pfadseg`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "resume", "test", "load", "predict", "make_config")


def __getattr__(name: str) -> Any:
    if name in _API:
        from pfadseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'pfadseg' has no attribute {name!r}")

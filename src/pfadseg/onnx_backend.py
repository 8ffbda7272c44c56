"""Inference through onnxruntime from an exported ``.onnx`` file: no torch import on this path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pfadseg.data.tiling import TileLayout, WholeImage
from pfadseg.errors import PfadsegError

#: Metadata keys ``pfadseg export`` writes into the ONNX file.
META_IMAGE_SIZE = "pfadseg.image_size"
META_THRESHOLDS = "pfadseg.thresholds"
META_GEOMETRY = "pfadseg.geometry"  # JSON: eval_size, top_k; for `tiles` its scale and overlap; a layout's fused model its knn_score_weight


class OnnxBackend:
    """An exported model as a prediction backend, with the thresholds stored in the file at export."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise PfadsegError("predicting with an .onnx file needs onnxruntime: pip install 'pfadseg[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise PfadsegError(f"{path}: no such file")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for every kind of bad file
            raise PfadsegError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.image_size = int(meta[META_IMAGE_SIZE])
            stored = json.loads(meta[META_THRESHOLDS])
            self.thresholds = {"image": float(stored["image"]), "pixel": float(stored["pixel"]), "precision": stored.get("precision")}
            geometry = json.loads(meta.get(META_GEOMETRY, "{}"))  # absent in files exported before tiles existed: square
            self.eval_size, self.top_k = int(geometry.get("eval_size", self.image_size)), int(geometry.get("top_k", 100))
            kind = geometry.get("geometry", "square")
            self.layout = (TileLayout(self.image_size, float(geometry["scale"]), float(geometry["overlap"])) if kind == "tiles"
                           else WholeImage(self.image_size) if kind == "aspect" else None)
            weight = geometry.get("knn_score_weight")  # a fused model in a layout: its maps carry the branches to score
            self.knn_score_weight = None if weight is None else float(weight)
        except (KeyError, ValueError, TypeError) as err:
            raise PfadsegError(f"{path}: not a pfadseg export (metadata {err} missing or unreadable)") from None

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 → maps (N, C, H, W) float32 at the trained size and scores (N,) (see ``Backend``)."""
        maps, scores = self.session.run(["anomaly_map", "score"], {"image": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})
        return maps, scores

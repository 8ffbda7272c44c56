"""The model as a line runs it: uint8 images in, anomaly map and image score out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfadseg.models.pfadseg import PFADSeg


class DeployedModel(nn.Module):
    """uint8 RGB ``(N, 3, H, W)`` at the trained size → map ``(N, C, H, W)`` float32 and score ``(N,)``.

    Scaling to [0, 1] and the teacher's normalisation happen inside, and map and score are computed
    exactly as ``pfadseg test`` computes them (the output branch at the evaluation size; the score a
    top-k mean), so this one module serves the PyTorch predictor and the ONNX export alike. C is 1, except for a
    fused model's tiles (the `tiles` and `aspect` geometries): 3, the fused map then the segmentation and kNN maps,
    whose stitched top-k means make the image score (:func:`pfadseg.data.tiling.layout_score`).
    """

    def __init__(self, model: PFADSeg, eval_size: int | None) -> None:
        """``eval_size``: the square the map is computed and scored at, None for the input's own size (a tile, or a
        whole image of the `aspect` geometry, whose map the predictor stitches and scores)."""
        super().__init__()
        self.model = model
        self.eval_size = eval_size

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Per-tile (eval_size None): a fused model's map carries the segmentation and kNN maps too, for the image score.
        size = None if self.eval_size is None else (self.eval_size, self.eval_size)
        anomaly_map, score = self.model(image.float() / 255.0, size, with_parts=self.eval_size is None)
        return F.interpolate(anomaly_map, size=image.shape[-2:], mode="bilinear", align_corners=False), score

"""One map and one score from the segmentation and kNN branches: the kNN branch rescaled to the segmentation branch's
spread on normal images, then added to it."""

from __future__ import annotations

import torch
from torch import nn

#: Floor of a standard deviation, so that a constant kNN branch on the held-out images cannot divide by zero.
MIN_STD = 1e-12


class Fusion(nn.Module):
    """``segmentation + w · kNN`` with ``w = std(segmentation) / std(kNN)`` over held-out normal images.

    Both branches then vary over normal images by the same amount, so neither dominates by its units: the
    ranking is that of the mean of the two z-scores, expressed in the segmentation map's units (so that
    rounding differences between backends stay as small as the segmentation map's own). Pixel maps use the
    spread of every held-out pixel, image scores that of the held-out scores. Only normal images kept out
    of training feed it (docs/design.md, "Memory bank and fusion").
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("knn_weight", torch.ones(2))  # for maps, for image scores

    @torch.no_grad()
    def fit(self, maps: tuple[torch.Tensor, torch.Tensor], scores: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The weights from the held-out normal images' (segmentation, kNN) maps and scores."""
        ratio = lambda seg, knn: seg.double().std() / knn.double().std().clamp_min(MIN_STD)  # noqa: E731
        map_weight = ratio(*maps)
        score_weight = ratio(*scores) if len(scores[0]) > 1 else map_weight  # one image has no spread of scores
        self.knn_weight.copy_(torch.stack([map_weight, score_weight]).float())

    @property
    def score_weight(self) -> float:
        """The kNN score's weight in the image score."""
        return float(self.knn_weight[1])

    def forward(self, seg_map: torch.Tensor, seg_score: torch.Tensor, knn_map: torch.Tensor,
                knn_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, H, W) maps and (N,) scores of both branches → the fused map and score, float32."""
        return seg_map.float() + self.knn_weight[0] * knn_map.float(), seg_score.float() + self.knn_weight[1] * knn_score.float()

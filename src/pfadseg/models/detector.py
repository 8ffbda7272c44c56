"""What a run predicts with: PFADSeg's segmentation map, fused with the memory bank's distance map when the run has one.

Every map comes out at the evaluation size; the image score is the mean of its top-k pixels
(k = ``model.top_k``). With a bank, the fused map is the pixel-wise maximum of the two maps, each
standardised by the held-out normal images' pixel statistics, and the fused score the mean of the
two branches' image scores, each standardised by the held-out images' scores (docs/design.md §14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfadseg.models.memory_bank import MemoryBank
from pfadseg.models.pfadseg import PFADSeg, distance_product, segmentation_input

BRANCHES = ("segmentation", "knn")


class Fusion(nn.Module):
    """Held-out normal statistics of each branch: pixel mean and std of its maps, mean and std of its image scores."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pixel", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # (branch, mean/std)
        self.register_buffer("score", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))

    def fit(self, maps: dict[str, Tensor], scores: dict[str, Tensor]) -> None:
        """Set the statistics from the held-out normal images' branch maps and scores (never from test images)."""
        def stats(values: Tensor) -> list[float]:
            values = values.double().flatten()
            return [float(values.mean()), max(float(values.std()), 1e-12) if len(values) > 1 else 1.0]

        self.pixel = torch.tensor([stats(maps[b]) for b in BRANCHES], dtype=torch.float32, device=self.pixel.device)
        self.score = torch.tensor([stats(scores[b]) for b in BRANCHES], dtype=torch.float32, device=self.score.device)

    def forward(self, maps: dict[str, Tensor], scores: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The fused map (max of standardised maps) and score (mean of standardised scores)."""
        z_maps = [(maps[b] - self.pixel[i, 0]) / self.pixel[i, 1] for i, b in enumerate(BRANCHES)]
        z_scores = [(scores[b] - self.score[i, 0]) / self.score[i, 1] for i, b in enumerate(BRANCHES)]
        return torch.maximum(*z_maps), (z_scores[0] + z_scores[1]) / 2


class Detector(nn.Module):
    """Images in [0, 1] → anomaly map at ``eval_size`` and image score; every branch's map on request.

    ``bank``: the memory bank, searched with the teacher's features of ``bank_images`` (the same
    images at the bank's input size) or, without them, of the segmentation branch's input.
    """

    def __init__(self, model: PFADSeg, eval_size: int, bank: MemoryBank | None = None, fusion: Fusion | None = None) -> None:
        super().__init__()
        self.model = model
        self.eval_size = eval_size
        self.bank = bank
        self.fusion = fusion

    def image_score(self, anomaly_map: Tensor) -> Tensor:
        return self.model.image_score(anomaly_map)

    def branch_maps(self, images: Tensor, bank_images: Tensor | None = None, diagnostic: bool = False) -> dict[str, Tensor]:
        """Float32 maps (N, 1, S, S) at the evaluation size: ``segmentation``, ``knn`` with a bank, ``student_teacher`` if asked."""
        size = (self.eval_size, self.eval_size)
        teacher_feats, student_feats = self.model.features(images)
        p = torch.sigmoid(self.model.segmentation(segmentation_input(teacher_feats, student_feats)))
        maps = {"segmentation": F.interpolate(p.float(), size=size, mode="bilinear", align_corners=False)}
        if diagnostic:
            st = distance_product(teacher_feats, student_feats)
            maps["student_teacher"] = F.interpolate(st.float(), size=size, mode="bilinear", align_corners=False)
        if self.bank is not None:
            bank_feats = teacher_feats if bank_images is None else self.model.teacher(bank_images)
            maps["knn"] = self.bank.smooth(self.bank.distance_map(bank_feats, chunk=None if torch.onnx.is_in_onnx_export() else 4096), size)
        return maps

    def combine(self, maps: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The run's output map and score from its branch maps: fused with a bank and its statistics, else the segmentation's."""
        if self.fusion is None or "knn" not in maps:
            return maps["segmentation"], self.image_score(maps["segmentation"])
        return self.fusion(maps, {b: self.image_score(maps[b]) for b in BRANCHES})

    def forward(self, images: Tensor, bank_images: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.combine(self.branch_maps(images, bank_images))

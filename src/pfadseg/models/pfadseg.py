"""The PFADSeg model: frozen teacher, denoising student and segmentation network in one module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pfadseg.models.architecture import ModelConfig
from pfadseg.models.fusion import Fusion
from pfadseg.models.memory_bank import MemoryBank
from pfadseg.models.segmentation import SegmentationNet
from pfadseg.models.student import Student
from pfadseg.models.teachers import Teacher, build_teacher


def cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-pixel 1 − cos(teacher, student) over channels, (N, C, H, W) → (N, 1, H, W), computed in float32."""
    return 1 - F.cosine_similarity(teacher.float(), student.float(), dim=1).unsqueeze(1)


def segmentation_input(teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor]) -> torch.Tensor:
    """The segmentation input: per level −t̂ ⊙ ŝ (channel-normalised), resized to the 1/4 grid and concatenated."""
    size = teacher_feats[0].shape[-2:]
    return torch.cat(
        [
            F.interpolate(-F.normalize(t, dim=1) * F.normalize(s, dim=1), size=size, mode="bilinear", align_corners=False)
            for t, s in zip(teacher_feats, student_feats)
        ],
        dim=1,
    )


def distance_product(teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor]) -> torch.Tensor:
    """The student–teacher map: product over levels of the cosine distances, at the 1/4 grid."""
    size = teacher_feats[0].shape[-2:]
    maps = [
        F.interpolate(cosine_distance(t, s), size=size, mode="bilinear", align_corners=False)
        for t, s in zip(teacher_feats, student_feats)
    ]
    return torch.stack(maps, dim=0).prod(dim=0)


def linear_student_outputs(config: ModelConfig, teacher: Teacher) -> bool:
    """Whether the student's output layers end linearly: ``config.student_output``, "auto" following the teacher."""
    if config.student_output == "auto":
        return teacher.signed_features
    if config.student_output not in ("relu", "linear"):
        raise ValueError(f"unknown student_output {config.student_output!r}: expected 'auto', 'relu' or 'linear'")
    return config.student_output == "linear"


class PFADSeg(nn.Module):
    """Teacher encoder + student decoder + guided segmentation network.

    Images enter as RGB floats in [0, 1]; the teacher's own normalisation is applied inside, so
    the student sees exactly what the teacher sees.
    """

    def __init__(self, config: ModelConfig, teacher: Teacher) -> None:
        super().__init__()
        self.config = config
        self.teacher = teacher
        self.student = Student(teacher.channels, config.block, config.zero_init_last_bn, linear_student_outputs(config, teacher))
        self.segmentation = SegmentationNet(sum(teacher.channels), config.block, config.head)
        self.memory_bank: MemoryBank | None = None  # set after training when the run has one (config.bank)
        self.fusion: Fusion | None = None  # set with the bank when normal images were held out to fit it

    @property
    def branches(self) -> list[str]:
        """The maps this model computes, in the order of :meth:`forward_branches`."""
        return ["segmentation", "student_teacher"] + ["knn"] * (self.memory_bank is not None) + ["fused"] * (self.fusion is not None)

    @property
    def output_branch(self) -> str:
        """The branch that decides: the fused map when the model has one, else the segmentation map (the paper's)."""
        return "fused" if self.fusion is not None else "segmentation"

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features of the same image (no gradients: for stage 2 and inference)."""
        x = self.teacher.normalize(images)
        with torch.no_grad():
            return self.teacher.features(x), self.student(x)

    def segment_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly logits at 1/4 of the input size, (N, 1, H/4, W/4)."""
        return self.segmentation(segmentation_input(*self.features(images)))

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: anomaly probability at 1/4 of the input size, (N, 1, H/4, W/4)."""
        return torch.sigmoid(self.segment_logits(images))

    def student_teacher_map(self, images: torch.Tensor) -> torch.Tensor:
        """Diagnostic map (1/4 size): product over levels of the cosine distances, student and teacher on x."""
        return distance_product(*self.features(images))

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Mean of the ``top_k`` highest pixels of each (N, 1, H, W) map → (N,)."""
        k = min(self.config.top_k, anomaly_map[0].numel())
        return anomaly_map.flatten(1).float().topk(k, dim=1).values.mean(dim=1)

    def scored_map(self, p: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A 1/4-size map upsampled (bilinear, float32) to ``size``, with its image score."""
        anomaly_map = F.interpolate(p.float(), size=size, mode="bilinear", align_corners=False)
        return anomaly_map, self.image_score(anomaly_map)

    def forward(self, images: torch.Tensor, output_size: tuple[int, int] | None = None,
                with_parts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: the output branch's anomaly map (N, 1, H, W) at ``output_size`` (default: the input's) and image score (N,).

        ``with_parts``: a fused model's map gets two more channels, the segmentation and kNN maps it adds up, whose
        top-k means the `tiles` and `aspect` geometries combine into the image score after stitching (as the fusion does).
        """
        size = tuple(images.shape[-2:]) if output_size is None else output_size
        if self.fusion is None:
            return self.scored_map(self.segment(images), size)
        teacher_feats, student_feats = self.features(images)
        seg = self.scored_map(torch.sigmoid(self.segmentation(segmentation_input(teacher_feats, student_feats))), size)
        knn = self.knn_scored_map(teacher_feats, size)
        fused_map, fused_score = self.fusion(*seg, *knn)
        return (torch.cat([fused_map, seg[0].float(), knn[0].float()], dim=1) if with_parts else fused_map), fused_score

    def knn_scored_map(self, teacher_feats: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory bank's nearest-patch distance map at ``size`` and its image score."""
        knn_map = self.memory_bank(teacher_feats, size)
        return knn_map, self.image_score(knn_map)

    def forward_branches(self, images: torch.Tensor, output_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Map and score of every branch in :attr:`branches` order (map₁, score₁, map₂, ...), from one feature pass."""
        teacher_feats, student_feats = self.features(images)
        seg = self.scored_map(torch.sigmoid(self.segmentation(segmentation_input(teacher_feats, student_feats))), output_size)
        outputs = [*seg, *self.scored_map(distance_product(teacher_feats, student_feats), output_size)]
        if self.memory_bank is not None:
            knn = self.knn_scored_map(teacher_feats, output_size)
            outputs += knn
            if self.fusion is not None:
                outputs += self.fusion(*seg, *knn)
        return tuple(outputs)


def build_model(config: ModelConfig, pretrained: bool = True, teacher_weights: str | None = None) -> PFADSeg:
    """A fresh model (random student and segmentation net) around the configured teacher."""
    return PFADSeg(config, build_teacher(config.teacher, pretrained=pretrained, weights=teacher_weights, taps=config.teacher_taps))

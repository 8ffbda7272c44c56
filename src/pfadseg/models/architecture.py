"""Model configuration and the two presets (PFADSeg and the DeSTSeg baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pfadseg.models.pa_block import BlockConfig
from pfadseg.models.segmentation import HeadConfig


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's architecture. Table 4's rows differ only in aff/pcar/head."""

    teacher: str = "resnet18"
    # The teacher blocks whose outputs are the three feature levels (strides 4, 8, 16); empty = the
    # teacher's default. EfficientNet-Lite0: one block each from 1–2, 3–4, 5–10, default (2, 4, 10). ResNet18: fixed.
    teacher_taps: tuple[int, ...] = ()
    block: BlockConfig = field(default_factory=BlockConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    zero_init_last_bn: bool = True
    # How the student's output layers end. "relu": as in ResNet18 (the paper). "linear": no final ReLU.
    # "auto": linear when the teacher's features are signed (EfficientNet-Lite0's linear bottlenecks),
    # since a non-negative student cannot align with them (1 − cos stays ≥ 0.22–0.32 on Lite0 features).
    student_output: Literal["auto", "relu", "linear"] = "auto"
    top_k: int = 100  # image score = mean of the top-k pixels of the anomaly map


MODEL_PRESETS: dict[str, ModelConfig] = {
    "pfadseg": ModelConfig(),
    "destseg": ModelConfig(block=BlockConfig(aff=False, pcar=False), head=HeadConfig(kind="aspp")),
}


def model_preset(name: str, teacher: str | None = None) -> ModelConfig:
    """A preset by name, optionally with another teacher."""
    from pfadseg.errors import PfadsegError

    if name not in MODEL_PRESETS:
        raise PfadsegError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
    config = MODEL_PRESETS[name]
    return config if teacher is None else replace(config, teacher=teacher)

"""Model configuration and the two presets (PFADSeg and the DeSTSeg baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pfadseg.models.pa_block import BlockConfig
from pfadseg.models.segmentation import HeadConfig


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's architecture. Table 4's rows differ only in aff/pcar/head."""

    teacher: str = "resnet18"
    block: BlockConfig = field(default_factory=BlockConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    zero_init_last_bn: bool = True
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

"""PFADSeg networks: teacher registry, student, segmentation net and the blocks named after the paper."""

from pfadseg.models.architecture import MODEL_PRESETS, ModelConfig, model_preset
from pfadseg.models.pfadseg import PFADSeg, build_model

__all__ = ["MODEL_PRESETS", "ModelConfig", "PFADSeg", "build_model", "model_preset"]

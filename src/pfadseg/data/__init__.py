"""Data: datasets and image reading, anomaly synthesis, textures, augmentation, the demo set.

Modules (one concern each): :mod:`~pfadseg.data.images` (reading, cache, batches),
:mod:`~pfadseg.data.datasets` (MVTec and folder layouts), :mod:`~pfadseg.data.synthesis`
(DRAEM/DeSTSeg anomaly synthesis), :mod:`~pfadseg.data.texture_augment` (DRAEM's texture
randAugment), :mod:`~pfadseg.data.textures` (texture sources), :mod:`~pfadseg.data.augment`
(per-category normal-image augmentation), :mod:`~pfadseg.data.geometry` (batched rotation),
:mod:`~pfadseg.data.demo` (built-in synthetic dataset), :mod:`~pfadseg.data.preview`
(synthesis preview picture).
"""

from pfadseg.data.augment import NormalAugmentation, augmentation_for_category
from pfadseg.data.datasets import (
    DatasetSplits,
    FolderSpec,
    Sample,
    folder_spec_from_args,
    load_folder,
    load_mvtec,
    magnetic_tile_spec,
)
from pfadseg.data.demo import DEMO_CATEGORIES, write_demo_dataset
from pfadseg.data.images import (
    ImageCache,
    load_images,
    load_masks,
    read_image,
    read_mask,
)
from pfadseg.data.preview import synthesis_preview
from pfadseg.data.synthesis import AnomalySynthesizer, SynthesisConfig
from pfadseg.data.textures import load_texture_folder, procedural_textures

__all__ = [
    "AnomalySynthesizer",
    "DEMO_CATEGORIES",
    "DatasetSplits",
    "FolderSpec",
    "ImageCache",
    "NormalAugmentation",
    "Sample",
    "SynthesisConfig",
    "augmentation_for_category",
    "folder_spec_from_args",
    "load_folder",
    "load_images",
    "load_masks",
    "load_mvtec",
    "load_texture_folder",
    "magnetic_tile_spec",
    "procedural_textures",
    "read_image",
    "read_mask",
    "synthesis_preview",
    "write_demo_dataset",
]

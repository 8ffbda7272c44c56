"""Data: datasets and image reading, anomaly synthesis, textures, augmentation, the demo set.

Modules (one concern each): :mod:`~pfadseg.data.images` (reading, cache, batches),
:mod:`~pfadseg.data.datasets` (MVTec and folder layouts), :mod:`~pfadseg.data.synthesis`
(DRAEM/DeSTSeg anomaly synthesis), :mod:`~pfadseg.data.texture_augment` (DRAEM's texture
randAugment), :mod:`~pfadseg.data.textures` (texture sources), :mod:`~pfadseg.data.augment`
(per-category normal-image augmentation), :mod:`~pfadseg.data.geometry` (batched rotation),
:mod:`~pfadseg.data.demo_generator` (built-in synthetic dataset), :mod:`~pfadseg.data.preview`
(synthesis preview picture).

Nothing is imported here, so that reading images does not pull in torch (the ONNX path).
"""

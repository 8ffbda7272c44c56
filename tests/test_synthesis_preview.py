"""The synthesis preview grid."""

from __future__ import annotations

import torch
from PIL import Image

from pfadseg.data.preview import synthesis_preview
from pfadseg.data.synthesis import AnomalySynthesizer
from pfadseg.data.textures import procedural_textures


def test_preview_grid_layout() -> None:
    synth = AnomalySynthesizer(procedural_textures(4, 32, seed=0))
    images = torch.randint(0, 256, (5, 3, 48, 40), dtype=torch.uint8)
    img = synthesis_preview(images, synth, torch.Generator().manual_seed(0), rows=3)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert img.size == (3 * 40 + 4 * 4, 20 + 3 * 48 + 4 * 4)
    again = synthesis_preview(images, synth, torch.Generator().manual_seed(0), rows=3)
    assert img.tobytes() == again.tobytes()

"""A picture of what the synthesis does: rows of normal image / synthetic image / mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pfadseg.data.augment import normal_augmentation
from pfadseg.data.datasets import DataConfig, load_images, load_splits
from pfadseg.data.synthesis import AnomalySynthesizer, SynthesisConfig
from pfadseg.data.textures import load_texture_source
from pfadseg.fileio import atomic_path

COLUMNS = ("normal", "synthetic", "mask")
_GAP = 4
_HEADER = 20


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` or float in [0, 1] to float32 in [0, 1]."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if not images.is_floating_point():
        return images.float() / 255.0
    return images.float().clamp(0.0, 1.0)


def _tile(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] to ``(H, W, 3)`` uint8."""
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def synthesis_preview(
    images: torch.Tensor,
    synthesizer: AnomalySynthesizer,
    generator: torch.Generator | None = None,
    rows: int = 4,
) -> Image.Image:
    """Grid image: one row per input image (the first ``rows``), columns normal / synthetic / mask."""
    x = _to_float(images[:rows] if rows > 0 else images)
    augmented, masks = synthesizer(x, generator)
    n, _, h, w = x.shape
    width = 3 * w + 4 * _GAP
    height = _HEADER + n * h + (n + 1) * _GAP
    canvas = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for col, label in enumerate(COLUMNS):
        draw.text((_GAP + col * (w + _GAP) + 2, 4), label, fill=(235, 235, 235), font=font)
    for row in range(n):
        top = _HEADER + _GAP + row * (h + _GAP)
        for col, tile in enumerate((x[row], augmented[row], masks[row])):
            canvas.paste(Image.fromarray(_tile(tile)), (_GAP + col * (w + _GAP), top))
    return canvas


def write_synthesis_preview(data: DataConfig, synthesis: SynthesisConfig, image_size: int, seed: int, out: Path, rows: int = 8) -> Path:
    """A PNG grid of ``rows`` training images of ``data`` with their synthetic anomalies and masks, as a run would draw them."""
    splits = load_splits(data)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(splits.train), generator=generator)[:rows].sort().values
    images = load_images([splits.train[i] for i in chosen.tolist()], image_size).float().div_(255)
    images = normal_augmentation(data)(images, generator)
    synthesizer = AnomalySynthesizer(load_texture_source(data, image_size, seed), synthesis)
    grid = synthesis_preview(images, synthesizer, generator, rows)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    return out

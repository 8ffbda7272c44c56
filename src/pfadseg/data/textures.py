"""Anomaly-source textures for the synthesis, as ``uint8`` tensors ``(T, 3, S, S)``.

* :func:`load_texture_folder`: every image under a folder, recursively (the DTD layout
  ``images/<class>/*.jpg`` or a flat folder), resized to ``S x S`` (aspect ratio ignored, as
  DRAEM's ``cv2.resize`` does).
* :func:`procedural_textures`: a built-in source that needs no files: fractal noise,
  stripes and bands, checkers and grids, cells (Voronoi), dots, marble, wood rings and smooth
  colour fields, each coloured with a random palette and fine grain. Deterministic in ``seed``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pfadseg.data.datasets import DataConfig
from pfadseg.data.images import IMAGE_EXTENSIONS, find_images, parallel_map, read_image
from pfadseg.errors import PfadsegError


def find_texture_files(path: str | os.PathLike) -> list[Path]:
    """Image files under ``path`` (recursive, hidden files and folders skipped), sorted by relative path."""
    root = Path(path)
    if not root.is_dir():
        raise PfadsegError(f"{root}: texture folder does not exist")
    return find_images(root)


def load_texture_folder(
    path: str | os.PathLike, size: int, limit: int | None = None, workers: int | None = None
) -> torch.Tensor:
    """Textures under ``path`` as ``uint8`` ``(T, 3, size, size)``.

    ``limit`` keeps at most that many files, evenly spread over the sorted list (so every DTD
    class stays represented).
    """
    files = find_texture_files(path)
    if not files:
        raise PfadsegError(f"{path}: no texture images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    if limit is not None and 0 < limit < len(files):
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in sorted(set(picks.tolist()))]
    arrays = parallel_map(lambda p: read_image(p, size), files, workers)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- procedural
# NumPy (single-threaded) on purpose: many small operations, which torch's thread pool makes
# much slower when the cores are busy with something else.

Rng = np.random.Generator
Field = np.ndarray


def _normalise(v: Field) -> Field:
    """Scale to [0, 1]."""
    lo, hi = float(v.min()), float(v.max())
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def _resize_field(grid: Field, size: int) -> Field:
    """Bicubic resize of a small float field to ``(S, S)`` with Pillow."""
    img = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.BICUBIC))


def _value_noise(rng: Rng, size: int, cells: int) -> Field:
    """Smooth random field ``(S, S)``: a random grid upsampled bicubically."""
    return _resize_field(rng.random((cells + 1, cells + 1), dtype=np.float32), size)


def _fractal(rng: Rng, size: int, base: int = 3, octaves: int = 5, persistence: float = 0.5) -> Field:
    """Sum of octaves of value noise, normalised to [0, 1]."""
    total = np.zeros((size, size), np.float32)
    amp = 1.0
    for o in range(octaves):
        total += amp * _value_noise(rng, size, min(size - 1, base * 2**o))
        amp *= persistence
    return _normalise(total)


def _coords(size: int) -> tuple[Field, Field]:
    """Pixel-centre coordinates in [0, 1), ``(S, S)`` each (rows, columns)."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(t, t, indexing="ij")


def _rotated(rng: Rng, size: int) -> Field:
    """Coordinate along a random direction, in image widths."""
    yy, xx = _coords(size)
    theta = rng.uniform(0.0, math.pi)
    return xx * math.cos(theta) + yy * math.sin(theta)


def _sigmoid(v: Field) -> Field:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _palette(rng: Rng, value: Field) -> Field:
    """Map a field in [0, 1] through a random 2-4 colour gradient: ``(S, S, 3)``."""
    k = int(rng.integers(2, 5))
    colours = rng.random((k, 3), dtype=np.float32)
    saturation = rng.uniform(0.15, 1.0)  # many real textures are far from fully saturated
    colours = colours.mean(axis=1, keepdims=True) * (1.0 - saturation) + colours * saturation
    pos = np.clip(value, 0, 1) * (k - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), k - 2)
    frac = (pos - lo)[..., None]
    return colours[lo] * (1 - frac) + colours[lo + 1] * frac


def _tex_fractal(rng: Rng, size: int) -> Field:
    return _fractal(rng, size, base=int(rng.integers(2, 9)), persistence=rng.uniform(0.35, 0.7))


def _tex_stripes(rng: Rng, size: int) -> Field:
    freq = rng.uniform(3.0, 30.0)
    warp = rng.uniform(0.0, 2.0) * _fractal(rng, size, base=3, octaves=3)
    wave = np.sin(2 * math.pi * (freq * _rotated(rng, size) + warp))
    return _sigmoid(rng.uniform(1.0, 8.0) * wave)


def _tex_checker(rng: Rng, size: int) -> Field:
    n = rng.uniform(3.0, 20.0)
    theta = rng.uniform(0.0, math.pi / 2)
    yy, xx = _coords(size)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if rng.random() < 0.5:
        value = ((np.floor(u * n) + np.floor(v * n)) % 2).astype(np.float32)
    else:  # grid lines
        width = rng.uniform(0.05, 0.3)
        value = (((u * n) % 1 < width) | ((v * n) % 1 < width)).astype(np.float32)
    return value * 0.8 + 0.2 * _fractal(rng, size, base=8, octaves=3)


def _tex_cells(rng: Rng, size: int) -> Field:
    n = int(rng.integers(8, 49))
    points = rng.random((n, 2), dtype=np.float32)
    yy, xx = _coords(size)
    d = (yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2
    two = np.sqrt(np.partition(d, 1, axis=0)[:2])
    if rng.random() < 0.5:  # cell edges
        return _normalise(np.tanh((two[1] - two[0]) * size / rng.uniform(2.0, 10.0)))
    shade = rng.random(n, dtype=np.float32)[d.argmin(axis=0)]
    return 0.75 * shade + 0.25 * _normalise(two[0])


def _tex_dots(rng: Rng, size: int) -> Field:
    n = int(rng.integers(10, 81))
    centres = rng.random((n, 2), dtype=np.float32)
    radii = rng.uniform(0.01, 0.06) * (0.5 + rng.random(n, dtype=np.float32))
    yy, xx = _coords(size)
    inside = np.zeros((size, size), np.float32)
    for (cy, cx), r in zip(centres, radii):
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        np.maximum(inside, _sigmoid((r - d) * size * 0.7), out=inside)
    return 0.85 * inside + 0.15 * _fractal(rng, size, base=6, octaves=3)


def _tex_marble(rng: Rng, size: int) -> Field:
    turbulence = _fractal(rng, size, base=int(rng.integers(2, 6)), octaves=5)
    freq, power = rng.uniform(2.0, 10.0), rng.uniform(2.0, 8.0)
    return (np.sin(2 * math.pi * freq * _rotated(rng, size) + power * turbulence) + 1) / 2


def _tex_wood(rng: Rng, size: int) -> Field:
    yy, xx = _coords(size)
    cy, cx = rng.uniform(-0.5, 1.5, 2)
    r = np.sqrt((yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.2, 1.0)) ** 2)
    rings = rng.uniform(8.0, 40.0)
    return (r * rings + rng.uniform(0.5, 3.0) * _fractal(rng, size, base=4, octaves=4)) % 1.0


def _tex_colour_field(rng: Rng, size: int) -> Field:
    """Smooth random colours: returns an ``(S, S, 3)`` image directly."""
    cells = int(rng.integers(2, 13))
    return np.clip(np.stack([_value_noise(rng, size, cells) for _ in range(3)], axis=-1), 0, 1)


_KINDS: tuple[Callable[[Rng, int], Field], ...] = (
    _tex_fractal,
    _tex_stripes,
    _tex_checker,
    _tex_cells,
    _tex_dots,
    _tex_marble,
    _tex_wood,
    _tex_colour_field,
)


def procedural_texture(rng: Rng, size: int, kind: int) -> np.ndarray:
    """One texture of kind ``kind`` (cycled over the 8 kinds) as float ``(S, S, 3)`` in [0, 1]."""
    field = _KINDS[kind % len(_KINDS)](rng, size)
    rgb = field if field.ndim == 3 else _palette(rng, field)
    grain = rng.uniform(0.0, 0.08) * (rng.random((size, size, 1), dtype=np.float32) - 0.5)
    return np.clip(rgb + grain, 0.0, 1.0)


def procedural_textures(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` varied built-in textures as ``uint8`` ``(count, 3, size, size)``, deterministic in ``seed``.

    Texture ``i`` depends only on ``(seed, i)``, so a longer list starts with the shorter one.
    """
    if count <= 0:
        raise ValueError("count must be positive")
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        rng = np.random.default_rng([int(seed), i])
        out[i] = np.rint(procedural_texture(rng, size, i) * 255.0).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_texture_source(data: DataConfig, size: int, seed: int) -> torch.Tensor:
    """Anomaly textures (T,3,S,S) uint8: a folder of images, or the built-in procedural ones."""
    if data.textures:
        return load_texture_folder(data.textures, size)
    return procedural_textures(data.procedural_textures, size, seed)

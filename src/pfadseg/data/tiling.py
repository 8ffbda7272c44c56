"""Input layouts of the `tiles` and `aspect` geometries: how an image is scaled and cut into the network's inputs, and
how their maps are put back together.

`tiles`: images scaled once, cut into overlapping square tiles of the training size, the tiles' maps stitched back.
`aspect`: the whole image scaled, its aspect kept, as one input. Either way the blocks that pool over the whole input
(AFF, PCAR's grid pools, RCM, ASPP) see the same extent in training and inference; nothing is squashed or padded.
NumPy only: the ONNX prediction path scales, tiles and stitches with this same code (docs/design.md, "Input geometry").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pfadseg.data.images import resize_map

#: The image score's top-k is stated per this many evaluated pixels (256², both papers' evaluation size).
TOP_K_AREA = 256 * 256


@dataclass(frozen=True)
class TileLayout:
    """Tiles of ``size``² taken from the images resized by ``scale``, neighbours overlapping by ``overlap`` of a tile."""

    size: int
    scale: float = 1.0
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.size < 1 or self.scale <= 0 or not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tiles need a positive size and scale and an overlap in [0, 1), got {self}")

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height × width`` is tiled at: scaled, and enlarged (aspect kept) to hold one tile."""
        h, w = height * self.scale, width * self.scale
        grow = max(1.0, self.size / min(h, w))
        return max(self.size, round(h * grow)), max(self.size, round(w * grow))

    def starts(self, length: int) -> list[int]:
        """Offsets of the tiles along one side of ``length`` (≥ size): evenly spread, the first at 0, the last at the end."""
        if length < self.size:
            raise ValueError(f"a side of {length} pixels cannot hold a tile of {self.size}")
        stride = max(1, round(self.size * (1.0 - self.overlap)))
        count = math.ceil((length - self.size) / stride) + 1
        if count == 1:
            return [0]
        return [round(i * (length - self.size) / (count - 1)) for i in range(count)]

    def boxes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of every tile of a ``height × width`` image, row by row."""
        return [(top, left) for top in self.starts(height) for left in self.starts(width)]

    def window(self) -> np.ndarray:
        """Blending weight of a tile (size, size): 1 inside, falling linearly towards each edge over the overlap."""
        ramp = max(1.0, self.size * self.overlap)
        i = np.arange(self.size, dtype=np.float64) + 0.5
        edge = np.minimum(1.0, np.minimum(i, self.size - i) / ramp)
        return np.outer(edge, edge).astype(np.float32)

    def tiles(self, image: np.ndarray, boxes: list[tuple[int, int]]) -> np.ndarray:
        """The tiles of an RGB uint8 image (H, W, 3) at ``boxes`` → (n, size, size, 3)."""
        return np.stack([image[top : top + self.size, left : left + self.size] for top, left in boxes])


@dataclass(frozen=True)
class WholeImage:
    """The `aspect` geometry as a layout: the image scaled so that its shorter side is ``size``, both sides rounded to
    a multiple of ``multiple`` (the network's coarsest stride), and one tile that is the whole scaled image."""

    size: int
    multiple: int = 32

    def __post_init__(self) -> None:
        if self.size < 2 * self.multiple:  # one-cell-wide coarse maps: oneDNN's bf16 channels_last convs return NaN there
            raise ValueError(f"the aspect geometry needs an image size of at least {2 * self.multiple} (two cells of the "
                             f"network's 1/{self.multiple} grid on the shorter side), got {self.size}")

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """The network's input size for an image of ``height × width``."""
        scale = self.size / min(height, width)
        return tuple(max(self.multiple, round(side * scale / self.multiple) * self.multiple) for side in (height, width))

    def boxes(self, height: int, width: int) -> list[tuple[int, int]]:
        """One tile at the origin: the whole image."""
        return [(0, 0)]

    def tiles(self, image: np.ndarray, boxes: list[tuple[int, int]]) -> np.ndarray:
        """The image itself as a batch of one (1, H, W, 3): a new, writable array, as :meth:`TileLayout.tiles` gives."""
        return image[None].copy()


#: How the `tiles` and `aspect` geometries turn an image into network inputs.
Layout = TileLayout | WholeImage


class Stitcher:
    """Accumulates tiles' maps (..., size, size) into one (..., H, W) map, each pixel the window-weighted mean of its tiles."""

    def __init__(self, layout: TileLayout, height: int, width: int, channels: int = 1) -> None:
        self.layout = layout
        self.window = layout.window()
        self.total = np.zeros((channels, height, width), dtype=np.float32)
        self.weight = np.zeros((height, width), dtype=np.float32)

    def add(self, maps: np.ndarray, boxes: list[tuple[int, int]]) -> None:
        """``maps`` (n, channels, size, size) of the tiles at ``boxes``."""
        s = self.layout.size
        for tile_map, (top, left) in zip(maps, boxes, strict=True):
            self.total[:, top : top + s, left : left + s] += tile_map * self.window
            self.weight[top : top + s, left : left + s] += self.window

    def result(self) -> np.ndarray:
        """The stitched (channels, H, W) map; every pixel must have been covered by a tile."""
        if not (self.weight > 0).all():
            raise ValueError("the tiles added do not cover the image")
        return self.total / self.weight


def stitch_tiles(image: np.ndarray, layout: Layout, run: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 channels: int = 1) -> np.ndarray:
    """Every tile of an RGB uint8 image (H, W, 3) through ``run`` ((n, h, w, 3) uint8 → (n, channels, h, w) maps),
    ``batch_size`` tiles at a time, stitched into (channels, H, W): the one loop that evaluation (PyTorch) and
    prediction (PyTorch or ONNX) share. A single tile is the whole image: its map is the result."""
    height, width = image.shape[:2]
    boxes = layout.boxes(height, width)
    if len(boxes) == 1:
        return run(layout.tiles(image, boxes))[0]
    stitcher = Stitcher(layout, height, width, channels)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        stitcher.add(run(layout.tiles(image, chunk)), chunk)
    return stitcher.result()


def top_k_score(anomaly_map: np.ndarray, top_k: int) -> float:
    """Mean of the highest pixels of a map, ``top_k`` of them per 256² pixels (so a score means the same at every size)."""
    k = min(anomaly_map.size, max(1, round(top_k * anomaly_map.size / TOP_K_AREA)))
    return float(np.partition(anomaly_map.ravel(), anomaly_map.size - k)[-k:].mean())


def aspect_shape(height: int, width: int, pixels: int) -> tuple[int, int]:
    """(h, w) of about ``pixels`` pixels with the aspect of ``height × width``."""
    scale = math.sqrt(pixels / (height * width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def stitched_scores(stitched: np.ndarray, eval_size: int, top_k: int) -> np.ndarray:
    """Image scores of stitched maps (channels, H, W): each one's top-k mean at its aspect with eval_size² pixels, so that
    a score means the same whatever the tile scale or the image's size."""
    shape = aspect_shape(*stitched.shape[1:], eval_size * eval_size)
    return np.array([top_k_score(resize_map(channel, shape), top_k) for channel in stitched], dtype=np.float32)


def layout_score(stitched: np.ndarray, eval_size: int, top_k: int, knn_score_weight: float | None = None) -> float:
    """One image's score from its stitched maps (channels, H, W): the top-k mean of the output map (channel 0); for a
    fused model, whose channels are (fused, segmentation, kNN), the segmentation's top-k mean plus ``knn_score_weight``
    times the kNN's, the fusion's rule for scores (the fused map's own top-k ranks images worse: docs/benchmarks.md)."""
    if knn_score_weight is None:
        return float(stitched_scores(stitched[:1], eval_size, top_k)[0])
    seg, knn = stitched_scores(stitched[1:3], eval_size, top_k)
    return float(seg + np.float32(knn_score_weight) * knn)

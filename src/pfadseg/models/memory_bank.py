"""A training-free memory bank of the teacher's patch features (PatchCore-style), and its nearest-neighbour map.

The frozen teacher already describes every image; the patches of the normal training images,
locally aggregated and thinned by a greedy k-centre coreset, are a memory of what normal looks
like. A test patch's anomaly score is its Euclidean distance to the nearest remembered patch.
docs/design.md §14 describes the protocol and its options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MemoryBankConfig:
    """How the bank is built and searched (``memory_bank.*`` in a run's configuration)."""

    enabled: bool = False
    image_size: int = 256  # input size of the bank's teacher pass; 0: the segmentation branch's input
    levels: tuple[int, ...] = (1, 2)  # teacher feature levels (0: stride 4, 1: stride 8, 2: stride 16), joined on the finest one's grid
    neighbourhood: int = 3  # each patch is the mean of its k×k neighbours (local aggregation)
    fraction: float = 0.1  # coreset size as a share of all training patches ...
    max_size: int = 16384  # ... and at most this many
    projection: int = 64  # the coreset is selected on a random projection to this many dimensions
    pool: int = 65536  # ... among at most this many patches drawn at random (the selection costs size × pool)
    blur_sigma: float = 4.0  # Gaussian blur of the distance map at the evaluation size, in pixels

    def __post_init__(self) -> None:
        if not self.levels or any(level not in (0, 1, 2) for level in self.levels):
            raise ValueError(f"memory_bank.levels must name teacher levels 0, 1 or 2, got {list(self.levels)}")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"memory_bank.neighbourhood must be an odd size, got {self.neighbourhood}")
        if not 0 < self.fraction <= 1 or self.max_size < 1:
            raise ValueError("memory_bank.fraction must be in (0, 1] and memory_bank.max_size at least 1")


def patch_features(teacher_feats: list[Tensor], levels: tuple[int, ...], neighbourhood: int) -> Tensor:
    """The bank's patch descriptors (N, C, h, w): each chosen level averaged over k×k neighbours, the coarser
    ones resized bilinearly to the finest chosen grid, concatenated over channels; float32."""
    grid = teacher_feats[min(levels)].shape[-2:]
    pad = neighbourhood // 2
    parts = []
    for level in sorted(levels):
        f = F.avg_pool2d(teacher_feats[level].float(), neighbourhood, stride=1, padding=pad, count_include_pad=False)
        parts.append(f if f.shape[-2:] == grid else F.interpolate(f, size=grid, mode="bilinear", align_corners=False))
    return torch.cat(parts, dim=1)


def greedy_coreset(points: Tensor, size: int, projection: int, generator: torch.Generator, pool: int = 0) -> Tensor:
    """Indices of ``size`` points chosen by greedy k-centre (farthest-point) selection, in float32.

    Each pick is the point farthest from those already picked, so the largest distance from any
    point to its nearest pick is at most twice the best any ``size`` points could achieve. Distances
    are measured after a random Gaussian projection to ``projection`` dimensions (they change little).
    ``pool``: select among this many points drawn at random (0: among all); the cost is size × pool.
    """
    n = len(points)
    if size >= n:
        return torch.arange(n)
    candidates = torch.randperm(n, generator=generator)[:pool] if 0 < pool < n else torch.arange(n)
    points = points[candidates].float()
    if projection and projection < points.shape[1]:
        matrix = torch.randn(points.shape[1], projection, generator=generator) / math.sqrt(projection)
        points = points @ matrix
    points = points.contiguous()
    sq_norms = (points * points).sum(1)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(len(points), (1,), generator=generator))
    nearest = torch.full((len(points),), float("inf"))
    for i in range(1, size):
        centre = points[chosen[i - 1]]
        distance = sq_norms - 2 * (points @ centre) + centre.dot(centre)
        torch.minimum(nearest, distance, out=nearest)
        chosen[i] = int(torch.argmax(nearest))
    return candidates[chosen]


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian of radius 4σ (the truncation of scipy's ``gaussian_filter``)."""
    radius = max(1, int(4 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class MemoryBank(nn.Module):
    """Remembered normal patches (M, C) and the blur of the distance map; empty until :meth:`fill`."""

    def __init__(self, config: MemoryBankConfig, channels: int, size: int = 0) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("patches", torch.zeros(size, channels))
        self.register_buffer("blur", gaussian_kernel(config.blur_sigma) if config.blur_sigma > 0 else torch.ones(1))

    def fill(self, patches: Tensor) -> None:
        """Keep these patches (M, C) as the memory."""
        self.patches = patches.detach().float().to(self.blur.device).contiguous()

    def distance_map(self, teacher_feats: list[Tensor], chunk: int | None = 4096) -> Tensor:
        """Each patch's Euclidean distance to its nearest remembered patch, (N, 1, h, w), float32.

        ``chunk``: query patches per matrix product (bounded memory); None: one product (what ONNX export traces).
        """
        with torch.autocast(teacher_feats[0].device.type, enabled=False):  # ‖a‖² + ‖b‖² − 2a·b loses too much in bf16
            features = patch_features(teacher_feats, self.config.levels, self.config.neighbourhood)
            n, c, h, w = features.shape
            queries = features.permute(0, 2, 3, 1).reshape(-1, c)
            bank_sq = (self.patches * self.patches).sum(1)
            parts = [self._nearest(q, bank_sq) for q in (queries.split(chunk) if chunk else (queries,))]
            return torch.cat(parts).reshape(n, 1, h, w)

    def _nearest(self, queries: Tensor, bank_sq: Tensor) -> Tensor:
        squared = (queries * queries).sum(1, keepdim=True) + bank_sq - 2 * queries @ self.patches.T
        return squared.min(dim=1).values.clamp_min(0).sqrt()

    def smooth(self, anomaly_map: Tensor, size: tuple[int, int]) -> Tensor:
        """The distance map resized bilinearly to ``size`` (the evaluation size) and blurred."""
        resized = F.interpolate(anomaly_map, size=size, mode="bilinear", align_corners=False)
        if self.blur.numel() == 1:
            return resized
        kernel = self.blur
        radius = kernel.numel() // 2
        padded = F.pad(resized, (radius, radius, radius, radius), mode="reflect")
        padded = F.conv2d(padded, kernel.view(1, 1, 1, -1))
        return F.conv2d(padded, kernel.view(1, 1, -1, 1))


def build_memory_bank(teacher: nn.Module, images: Tensor, config: MemoryBankConfig, seed: int, batch_size: int = 16) -> MemoryBank:
    """The bank of uint8 images (N, 3, S, S) of normal parts: every patch gathered, then the coreset kept."""
    patches = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(teacher.mean.device).float().div(255)
            f = patch_features(teacher(batch), config.levels, config.neighbourhood)
            patches.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu())
    gathered = torch.cat(patches)
    size = min(config.max_size, math.ceil(config.fraction * len(gathered)))
    chosen = greedy_coreset(gathered, size, config.projection, torch.Generator().manual_seed(seed), config.pool)
    bank = MemoryBank(config, gathered.shape[1]).to(teacher.mean.device)
    bank.fill(gathered[chosen])
    return bank

"""Training batches: sample normal images, augment them, and synthesise anomalies, all on the device."""

from __future__ import annotations

import numpy as np
import torch

from pfadseg.data.augment import NormalAugmentation
from pfadseg.data.synthesis import AnomalySynthesizer


class RandomTiles:
    """Training images of the `tiles` geometry (RGB uint8 arrays (H, W, 3) of any sizes, the run's decoded images
    themselves, not a copy): a batch is one random tile of ``size``² from each drawn image, moved to ``device``."""

    def __init__(self, images: list[np.ndarray], size: int, device: torch.device) -> None:
        self.images = images
        self.size = size
        self.device = device

    def __len__(self) -> int:
        return len(self.images)

    def take(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, size, size) uint8: a tile at a uniformly drawn position of each image in ``indices``."""
        tiles = []
        for i in indices.tolist():
            image = self.images[i]
            top, left = (int(torch.randint(extent - self.size + 1, (), generator=generator)) for extent in image.shape[:2])
            tiles.append(image[top : top + self.size, left : left + self.size])
        return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous().to(self.device)


class SizeGroups:
    """Training images of the `aspect` geometry (RGB uint8 arrays (H, W, 3), their sizes set by the aspect): a batch
    comes from the images of one size, a size drawn in proportion to its number of images, so nothing is padded."""

    def __init__(self, images: list[np.ndarray], device: torch.device) -> None:
        self.images = images
        self.device = device
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        self.groups = [torch.tensor(members) for members in by_size.values()]
        self.weights = torch.tensor([len(members) for members in self.groups], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.images)

    def group(self, generator: torch.Generator) -> torch.Tensor:
        """The indices of the images of one size, drawn with probability proportional to their number."""
        return self.groups[int(torch.multinomial(self.weights, 1, generator=generator))]

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 of the images at ``indices`` (all of one size)."""
        return torch.from_numpy(np.stack([self.images[i] for i in indices.tolist()])).permute(0, 3, 1, 2).contiguous().to(self.device)


class BatchMaker:
    """Draws (clean, synthetic, mask) batches from images cached as uint8 (whole, as random tiles, or by size groups).

    Two generators make a run reproducible and resumable: ``sampling`` (CPU, the same seed on
    every rank, so data-parallel ranks take disjoint slices of one draw) and ``synthesis`` (on
    the device, a different seed per rank).
    """

    def __init__(
        self,
        images: torch.Tensor | RandomTiles | SizeGroups,
        synthesizer: AnomalySynthesizer,
        augmentation: NormalAugmentation,
        batch_size: int,
        seed: int,
        memory_format: torch.memory_format = torch.contiguous_format,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) == 0:
            raise ValueError("no training images")
        self.images = images
        self.synthesizer = synthesizer
        self.augmentation = augmentation
        self.batch_size = batch_size
        self.memory_format = memory_format
        self.rank = rank
        self.world_size = world_size
        self.sampling = torch.Generator(device="cpu").manual_seed(seed)
        self.synthesis = torch.Generator(device=images.device).manual_seed(seed + 1_000_003 * (rank + 1))

    def indices(self) -> torch.Tensor:
        """This rank's slice of one global batch; without replacement when there are enough images (of the drawn size,
        for :class:`SizeGroups`)."""
        pool = self.images.group(self.sampling) if isinstance(self.images, SizeGroups) else None
        n, total = len(self.images) if pool is None else len(pool), self.batch_size * self.world_size
        draw = torch.randperm(n, generator=self.sampling)[:total] if n >= total else torch.randint(n, (total,), generator=self.sampling)
        draw = draw if pool is None else pool[draw]
        return draw[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """clean (B,3,H,W) in [0,1], synthetic (B,3,H,W), mask (B,1,H,W) in {0,1}."""
        if isinstance(self.images, RandomTiles):  # tile positions come from the sampling generator: resume stays exact
            clean = self.images.take(self.indices(), self.sampling).float().div_(255)
        elif isinstance(self.images, SizeGroups):
            clean = self.images.take(self.indices()).float().div_(255)
        else:
            clean = self.images[self.indices().to(self.images.device)].float().div_(255)
        clean = self.augmentation(clean, self.synthesis)
        synthetic, mask = self.synthesizer(clean, self.synthesis)
        fmt = self.memory_format
        return clean.contiguous(memory_format=fmt), synthetic.contiguous(memory_format=fmt), mask

    def rng_state(self) -> dict[str, torch.Tensor]:
        return {"sampling": self.sampling.get_state(), "synthesis": self.synthesis.get_state()}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        self.sampling.set_state(state["sampling"].cpu())
        self.synthesis.set_state(state["synthesis"].cpu())

"""Per-category augmentation of the normal training image (docs/design.md §7).

Applied before the synthesis, so teacher and student see the same geometry:

* random multiple of 90 degrees, then a uniform angle in ±5 degrees: bottle, carpet, grid,
  hazelnut, leather, screw, tile;
* only ±5 degrees: cable, wood, zipper;
* nothing: capsule, metal_nut, pill, toothbrush, transistor, and any other name.

Optionally (``data.brightness``, off as published) each image's brightness is scaled by a
factor drawn from U(1 − b, 1 + b), for products photographed under varying exposure.

Pixels rotated in from outside the image get the grey 114/255. Both rotations are done in one
bilinear resampling (a multiple of 90 degrees alone is exact on square images).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pfadseg.data.datasets import DataConfig
from pfadseg.data.geometry import rotate

ROTATE90_CATEGORIES = frozenset({"bottle", "carpet", "grid", "hazelnut", "leather", "screw", "tile"})
SMALL_ROTATION_CATEGORIES = frozenset({"cable", "wood", "zipper"})
FILL_GREY = 114.0 / 255.0


@dataclass
class NormalAugmentation:
    """Random rotation of the normal images (a multiple of 90° if ``rotate90``, plus U(±max_degrees)) and brightness."""

    rotate90: bool = False
    max_degrees: float = 0.0
    fill: float = FILL_GREY
    brightness: float = 0.0  # images are scaled by U(1 - brightness, 1 + brightness), then clipped to [0, 1]

    @property
    def rotates(self) -> bool:
        return self.rotate90 or self.max_degrees > 0

    @property
    def enabled(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.rotates or self.brightness > 0

    def angles(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw the rotation angles (degrees, counter-clockwise) for ``batch`` images."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        quarter = torch.randint(0, 4, (batch,), generator=generator, device=gdev).float()
        small = (torch.rand(batch, generator=generator, device=gdev) * 2.0 - 1.0) * self.max_degrees
        return (90.0 * quarter if self.rotate90 else torch.zeros(batch, device=gdev)) + small

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment float images ``(B, C, H, W)`` in [0, 1]; returns the input when disabled."""
        if not self.enabled or images.shape[0] == 0:
            return images
        if not images.is_floating_point():
            raise ValueError("images must be a float tensor in [0, 1]")
        if self.rotates:
            images = rotate(images, self.angles(images.shape[0], generator).to(images.device), fill=self.fill)
        if self.brightness > 0:
            gdev = generator.device if generator is not None else images.device
            factors = 1 + (torch.rand(images.shape[0], generator=generator, device=gdev) * 2 - 1) * self.brightness
            images = (images * factors.to(images.device).reshape(-1, 1, 1, 1)).clamp_(0, 1)
        return images


def augmentation_for_category(name: str | None) -> NormalAugmentation:
    """The MVTec augmentation of category ``name`` (unknown names get none)."""
    key = (name or "").strip().lower()
    if key in ROTATE90_CATEGORIES:
        return NormalAugmentation(rotate90=True, max_degrees=5.0)
    if key in SMALL_ROTATION_CATEGORIES:
        return NormalAugmentation(rotate90=False, max_degrees=5.0)
    return NormalAugmentation()


def normal_augmentation(data: DataConfig) -> NormalAugmentation:
    """The training images' augmentation: the category's rotations (or the named one's) and the brightness jitter."""
    name = data.category if data.augmentation == "auto" else data.augmentation
    return replace(augmentation_for_category(name), brightness=data.brightness)

"""Batched rotation of image tensors about their centre (affine_grid + grid_sample)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotation_grid(degrees: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` that rotates each image counter-clockwise by ``degrees``.

    The rotation is in pixel space (the aspect ratio is respected for non-square images),
    about the image centre, like ``PIL.Image.rotate`` with ``expand=False``.
    """
    rad = degrees.to(dtype) * (math.pi / 180.0)
    c, s = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(c)
    theta = torch.stack(
        [
            torch.stack([c, -s * (height / width), zero], dim=1),
            torch.stack([s * (width / height), c, zero], dim=1),
        ],
        dim=1,
    )
    return F.affine_grid(theta, [degrees.shape[0], 1, height, width], align_corners=False)


def rotate(
    images: torch.Tensor,
    degrees: torch.Tensor,
    fill: float = 0.0,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Rotate each image of a float batch ``(B, C, H, W)`` by its angle; outside pixels get ``fill``.

    Bilinear sampling blends the border into ``fill`` exactly as constant-mode padding does.
    """
    b, _, h, w = images.shape
    grid = rotation_grid(degrees.to(images.device), h, w, images.dtype)
    if fill == 0.0:
        return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = F.grid_sample(images - fill, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out + fill

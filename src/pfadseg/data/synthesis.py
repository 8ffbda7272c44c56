"""Anomaly synthesis: DRAEM's algorithm as DeSTSeg uses it (docs/design.md §7), batched in torch.

For each normal image ``I`` (float, [0, 1]):

1. Perlin noise at the image size with resolution ``(2**a, 2**b)``, ``a, b`` drawn
   independently from ``{0..5}`` (DRAEM's ``rand_perlin_2d_np``, including its ``sqrt(2)``
   scale and quintic fade). Any image size works: the noise is generated at the next size
   divisible by the resolution and cropped.
2. The noise is rotated by a uniform angle in ±90° (imgaug ``Affine(rotate=(-90, 90))``:
   bilinear, constant fill 0), here with ``affine_grid`` + ``grid_sample``.
3. ``M = noise > 0.5``.
4. A random texture ``A`` (resized to the image size), optionally put through DRAEM's random
   augmentation (:mod:`pfadseg.data.texture_augment`; off in DeSTSeg).
5. ``I_aug = I (1 - M) + (1 - beta) A M + beta I M`` with ``beta`` uniform in [0, 0.8).

Every sample gets an anomaly by default (``anomaly_probability = 1``); empty masks (about 4-5 %)
are kept. Randomness comes only from the ``torch.Generator`` passed in: parameters are drawn on
the generator's device, so a seed reproduces a batch exactly, on CPU or CUDA.

``grey_on_grey`` (off by default) replaces the texture by its luminance (ITU-R 601 weights) on
images whose three channels are equal, so that a grey product (e.g. Magnetic Tile) is not taught
that anomalies are coloured.

``foreground_only`` (off by default) restricts ``M`` to an estimate of the object foreground
computed from the image itself (:func:`estimate_foreground`): the background colour is the
per-channel median of a thin border band; pixels whose largest channel difference from it,
box-smoothed over about 3 % of the image side, exceeds ``foreground_threshold`` are foreground.
If that leaves less than ``foreground_min_fraction`` of the image, the whole image counts as
foreground (the image has no uniform background, e.g. a texture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pfadseg.data.geometry import rotate
from pfadseg.data.texture_augment import luminance, random_augment


@dataclass
class SynthesisConfig:
    """Every knob of the synthesis; the defaults are DeSTSeg's."""

    perlin_scale_min: int = 0  # resolution exponent a in 2**a, inclusive
    perlin_scale_max: int = 6  # exclusive: torch.randint(0, 6) in DRAEM/DeSTSeg
    rotation_degrees: float = 90.0  # noise rotated by U(-d, d)
    threshold: float = 0.5  # M = noise > threshold
    beta_min: float = 0.0  # beta ~ U(beta_min, beta_max); texture weight is 1 - beta
    beta_max: float = 0.8
    anomaly_probability: float = 1.0  # samples without an anomaly get M = 0 and I_aug = I
    texture_augmentation: bool = False  # DRAEM's randAugment of the texture (3 of 10 ops)
    grey_on_grey: bool = False  # on grey images, paste the texture's luminance only (no colour)
    foreground_only: bool = False  # restrict M to the estimated object foreground
    foreground_threshold: float = 0.1  # colour distance from the background, on [0, 1]
    foreground_border: float = 0.02  # border band (fraction of the shorter side) for the background
    foreground_smoothing: float = 0.03  # box filter size (fraction of the shorter side)
    foreground_min_fraction: float = 0.02  # below this, the whole image is foreground

    def __post_init__(self) -> None:
        if not 0 <= self.perlin_scale_min < self.perlin_scale_max:
            raise ValueError("need 0 <= perlin_scale_min < perlin_scale_max")
        if not 0.0 <= self.beta_min <= self.beta_max <= 1.0:
            raise ValueError("need 0 <= beta_min <= beta_max <= 1")
        if not 0.0 <= self.anomaly_probability <= 1.0:
            raise ValueError("anomaly_probability must be in [0, 1]")


@dataclass
class SynthesisResult:
    """A synthesised batch and the parameters drawn for it (for tests and diagnostics)."""

    images: torch.Tensor  # (B, 3, H, W) float
    masks: torch.Tensor  # (B, 1, H, W) float in {0, 1}
    beta: torch.Tensor  # (B,)
    texture_index: torch.Tensor  # (B,) long
    resolution: torch.Tensor  # (B, 2) long: Perlin resolution (rows, columns)
    angle: torch.Tensor  # (B,) degrees
    applied: torch.Tensor  # (B,) bool: sample drew an anomaly


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _axis_coords(length: int, res: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cell index and fractional position along one axis, shapes ``(B, length)``.

    Cell size ``d = ceil(length / res)`` pixels: this is DRAEM's grid at the next length
    divisible by ``res``, cropped to ``length``.
    """
    d = (length + res - 1) // res  # (B,)
    pos = torch.arange(length, device=res.device)[None, :]
    cell = pos // d[:, None]
    frac = (pos % d[:, None]).to(dtype) / d[:, None].to(dtype)
    return cell, frac


def perlin_noise(
    height: int,
    width: int,
    resolution: torch.Tensor,
    gradient_angles: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """DRAEM's 2-D Perlin noise for a batch, ``(B, H, W)``.

    ``resolution`` is ``(B, 2)`` (cells along rows, columns); ``gradient_angles`` is
    ``(B, G, G)`` radians with ``G > max(resolution)``; corner ``(i, j)`` of a sample uses
    ``gradient_angles[b, i, j]``.

    DRAEM's formula, per pixel with cell ``(i, j)``, fractions ``(fy, fx)`` and fades
    ``wy_0 = 1 - fade(fy), wy_1 = fade(fy)`` (likewise ``wx``), is::

        sqrt(2) * sum over di, dj in {0, 1} of wy_di * wx_dj *
            ((fy - di) * gr[i + di, j + dj] + (fx - dj) * gc[i + di, j + dj])

    with ``(gr, gc) = (cos, sin)`` of the corner angle. Each term factors into a row part and a
    column part, so the whole sum is one batched matrix product ``L @ R`` with
    ``L = (B, H, 2G)`` and ``R = (B, 2G, W)``: no per-pixel gathers.
    """
    b, g, _ = gradient_angles.shape
    device = gradient_angles.device
    resolution = resolution.to(device)
    cy, fy = _axis_coords(height, resolution[:, 0], dtype)  # (B, H)
    cx, fx = _axis_coords(width, resolution[:, 1], dtype)  # (B, W)
    grad_r = torch.cos(gradient_angles).to(dtype)  # component along rows, (B, G, G)
    grad_c = torch.sin(gradient_angles).to(dtype)  # component along columns
    ty, tx = _fade(fy), _fade(fx)
    left = torch.zeros(b, height, 2 * g, dtype=dtype, device=device)
    right = torch.zeros(b, 2 * g, width, dtype=dtype, device=device)
    for d, wy, wx in ((0, 1.0 - ty, 1.0 - tx), (1, ty, tx)):
        rows = cy + d  # (B, H) corner row index
        cols = cx + d  # (B, W) corner column index
        # row part: wy * (fy - d) * gr[i + d, :]   and   wy * onehot(i + d)
        gr_rows = grad_r.gather(1, rows[:, :, None].expand(b, height, g))
        left[:, :, :g] += (wy * (fy - d))[:, :, None] * gr_rows
        left[:, :, g:].scatter_add_(2, rows[:, :, None], wy[:, :, None])
        # column part: wx * onehot(j + d)   and   wx * (fx - d) * gc[:, j + d]
        right[:, :g, :].scatter_add_(1, cols[:, None, :], wx[:, None, :])
        gc_cols = grad_c.gather(2, cols[:, None, :].expand(b, g, width))
        right[:, g:, :] += (wx * (fx - d))[:, None, :] * gc_cols
    return math.sqrt(2.0) * torch.bmm(left, right)


def estimate_foreground(images: torch.Tensor, config: SynthesisConfig) -> torch.Tensor:
    """Foreground estimate ``(B, 1, H, W)`` bool from the images themselves (module docstring)."""
    b, c, h, w = images.shape
    band = max(1, round(config.foreground_border * min(h, w)))
    border = torch.cat(
        [
            images[:, :, :band, :].reshape(b, c, -1),
            images[:, :, -band:, :].reshape(b, c, -1),
            images[:, :, :, :band].reshape(b, c, -1),
            images[:, :, :, -band:].reshape(b, c, -1),
        ],
        dim=2,
    )
    background = border.median(dim=2).values[:, :, None, None]
    dist = (images - background).abs().amax(dim=1, keepdim=True)
    k = max(1, round(config.foreground_smoothing * min(h, w))) | 1
    # separable box mean (equal to the k x k one, borders included)
    smooth = F.avg_pool2d(dist, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)
    smooth = F.avg_pool2d(smooth, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)
    fg = smooth > config.foreground_threshold
    too_small = fg.flatten(1).float().mean(dim=1) < config.foreground_min_fraction
    return fg | too_small[:, None, None, None]


def is_grey(images: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the image's three channels are equal (within half a grey level)."""
    return (images.amax(dim=1) - images.amin(dim=1)).flatten(1).amax(dim=1) < 0.5 / 255


class AnomalySynthesizer:
    """Turn a batch of normal images into synthetic anomalies with their masks.

    ``textures`` is a ``uint8`` (or float in [0, 1]) tensor ``(T, 3, S, S)`` of anomaly sources
    (:mod:`pfadseg.data.textures`). A float copy is cached per device.
    """

    def __init__(self, textures: torch.Tensor, config: SynthesisConfig | None = None) -> None:
        if textures.ndim != 4 or textures.shape[1] != 3 or textures.shape[0] == 0:
            raise ValueError(f"textures must be (T, 3, S, S) with T > 0, got {tuple(textures.shape)}")
        self.textures = textures
        self.config = config or SynthesisConfig()
        self._float: dict[tuple, torch.Tensor] = {}  # the textures as floats, for one device and dtype

    def _textures(self, index: torch.Tensor, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The drawn textures as floats in [0, 1] at ``(height, width)``: from a cached float copy when that is the
        textures' own size (square and tiled training), else only the drawn ones resized (`aspect` batches vary in size)."""
        if (height, width) != tuple(self.textures.shape[-2:]):
            return self._as_float(self.textures[index.to(self.textures.device)].to(device), height, width, dtype)
        key = (str(device), dtype)
        if key not in self._float:
            self._float = {key: self._as_float(self.textures.to(device), height, width, dtype)}
        return self._float[key][index]

    @staticmethod
    def _as_float(tex: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Textures as floats in [0, 1] resized (antialiased bilinear) to ``(height, width)``."""
        tex = tex.float() / 255.0 if not tex.is_floating_point() else tex.float()
        if tex.shape[-2:] != (height, width):
            tex = F.interpolate(tex, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)
        return tex.to(dtype)

    def synthesize(self, images: torch.Tensor, generator: torch.Generator | None = None) -> SynthesisResult:
        """Synthesise anomalies on float images ``(B, 3, H, W)`` in [0, 1]; see the module docstring."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError("images must be a float tensor in [0, 1]")
        cfg = self.config
        b, _, h, w = images.shape
        device, dtype = images.device, images.dtype
        gdev = generator.device if generator is not None else torch.device("cpu")

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=gdev)

        exponents = torch.randint(cfg.perlin_scale_min, cfg.perlin_scale_max, (b, 2), generator=generator, device=gdev)
        angle = (rand(b) * 2.0 - 1.0) * cfg.rotation_degrees
        tex_index = torch.randint(0, self.textures.shape[0], (b,), generator=generator, device=gdev)
        beta = cfg.beta_min + rand(b) * (cfg.beta_max - cfg.beta_min)
        applied = rand(b) < cfg.anomaly_probability
        g = 2 ** (cfg.perlin_scale_max - 1) + 1
        grad_angles = rand(b, g, g) * (2.0 * math.pi)

        resolution = (2 ** exponents).to(device)
        # noise precision: float32 at least; float64 on CUDA, where a TF32 matmul setting
        # would otherwise round the batched product in perlin_noise
        noise_dtype = torch.float64 if device.type == "cuda" else torch.promote_types(dtype, torch.float32)
        noise = perlin_noise(h, w, resolution, grad_angles.to(device), noise_dtype)
        noise = rotate(noise[:, None], angle.to(device), fill=0.0)
        mask = noise > cfg.threshold
        if cfg.foreground_only:
            mask &= estimate_foreground(images, cfg)
        mask &= applied.to(device)[:, None, None, None]
        mask_f = mask.to(dtype)

        texture = self._textures(tex_index.to(device), h, w, device, dtype)
        if cfg.texture_augmentation:
            texture = random_augment(texture, generator)
        if cfg.grey_on_grey:
            texture = torch.where(is_grey(images)[:, None, None, None], luminance(texture).expand_as(texture), texture)
        beta_d = beta.to(device=device, dtype=dtype)[:, None, None, None]
        # I (1 - M) + (1 - beta) A M + beta I M  ==  I + (1 - beta) M (A - I)
        augmented = torch.addcmul(images, mask_f * (1.0 - beta_d), texture - images)
        return SynthesisResult(
            images=augmented,
            masks=mask_f,
            beta=beta.to(device),
            texture_index=tex_index.to(device),
            resolution=resolution,
            angle=angle.to(device),
            applied=applied.to(device),
        )

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(augmented (B, 3, H, W), masks (B, 1, H, W) float in {0, 1})``."""
        result = self.synthesize(images, generator)
        return result.images, result.masks

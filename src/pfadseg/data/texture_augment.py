"""DRAEM's random augmentation of the anomaly-source texture, in torch.

DRAEM (``randAugmenter``) applies 3 distinct operations, in random order, drawn from 10 imgaug
augmenters. Their imgaug parameters are reproduced here on float images in [0, 1]:

=============  ===============================================================================
gamma          ``GammaContrast((0.5, 2.0), per_channel=True)``: x ** g, g per channel
brightness     ``MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))`` on the Y of YCrCb
sharpen        ``pillike.EnhanceSharpness(factor=(0, 2))``: PIL's smooth kernel, blended
hue/sat        ``AddToHueAndSaturation((-50, 50), per_channel=True)`` (hue on a 0..255 turn)
solarize       ``Solarize(0.5, threshold=(32, 128))``: with p 0.5 invert values >= threshold
posterize      ``Posterize()``: keep 1..8 bits
invert         ``Invert()``: 1 - x
autocontrast   ``pillike.Autocontrast(cutoff=(0, 20))``: PIL's per-channel stretch, cutoff 0..20 %
equalize       ``pillike.Equalize()``: PIL's per-channel histogram equalisation
affine         ``Affine(rotate=(-45, 45))``: bilinear, fill 0
=============  ===============================================================================

Each operation runs batched over the samples that chose it at a given step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pfadseg.data.geometry import rotate

Op = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _rand(n: int, generator: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, returned on ``device``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand((n, *shape), generator=generator, device=gdev).to(device)


def _uniform(x: torch.Tensor, g: torch.Generator | None, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """Per-sample uniform values in [lo, hi) shaped ``(n, *shape)``."""
    return lo + (hi - lo) * _rand(x.shape[0], g, x.device, *shape).to(x.dtype)


def gamma(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Per-channel gamma in [0.5, 2]."""
    gam = _uniform(x, g, 0.5, 2.0, x.shape[1])[:, :, None, None]
    return x.clamp(min=0.0) ** gam


def luminance(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` luma of RGB images (ITU-R 601: 0.299 R + 0.587 G + 0.114 B)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def brightness(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Multiply luma by [0.8, 1.2] and add [-30, 30]/255 (chroma unchanged)."""
    mul = _uniform(x, g, 0.8, 1.2)[:, None, None, None]
    add = _uniform(x, g, -30.0 / 255.0, 30.0 / 255.0)[:, None, None, None]
    return (x + luminance(x) * (mul - 1.0) + add).clamp(0.0, 1.0)


def sharpen(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness`` with a factor in [0, 2] (border pixels kept)."""
    factor = _uniform(x, g, 0.0, 2.0)[:, None, None, None]
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype, device=x.device) / 13.0
    c = x.shape[1]
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), padding=1, groups=c)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return (smooth + factor * (x - smooth)).clamp(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to HSV with hue in [0, 1) (a full turn)."""
    r, gch, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r,
        ((gch - b) / safe) % 6.0,
        torch.where(maxc == gch, (b - r) / safe + 2.0, (r - gch) / safe + 4.0),
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    k = torch.stack([(5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0], dim=1)
    t = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[:, None] - v[:, None] * s[:, None] * t


def hue_saturation(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Add [-50, 50] to hue (255 = a full turn) and, independently, to saturation (0..255)."""
    dh = _uniform(x, g, -50.0, 50.0)[:, None, None] / 255.0
    ds = _uniform(x, g, -50.0, 50.0)[:, None, None] / 255.0
    hsv = rgb_to_hsv(x)
    h = (hsv[:, 0] + dh) % 1.0
    s = (hsv[:, 1] + ds).clamp(0.0, 1.0)
    return hsv_to_rgb(torch.stack([h, s, hsv[:, 2]], dim=1)).clamp(0.0, 1.0)


def solarize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """With probability 0.5, invert the values at or above a threshold in [32, 128]/255."""
    apply = _rand(x.shape[0], g, x.device) < 0.5
    thr = _uniform(x, g, 32.0 / 255.0, 128.0 / 255.0)[:, None, None, None]
    inverted = torch.where(x >= thr, 1.0 - x, x)
    return torch.where(apply[:, None, None, None], inverted, x)


def posterize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Keep the top 1..8 bits of each 8-bit value."""
    gdev = g.device if g is not None else torch.device("cpu")
    bits = torch.randint(1, 9, (x.shape[0],), generator=g, device=gdev).to(x.device)
    step = (2 ** (8 - bits)).to(x.dtype)[:, None, None, None]
    q = torch.floor(torch.round(x * 255.0) / step) * step
    return q / 255.0


def invert(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """1 - x."""
    return 1.0 - x


def _histograms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit values ``(n*c, H*W)`` and their per-channel histograms ``(n*c, 256)``."""
    n, c = x.shape[:2]
    v = torch.round(x.clamp(0.0, 1.0) * 255.0).long().reshape(n * c, -1)
    offsets = torch.arange(n * c, device=x.device)[:, None] * 256
    hist = torch.bincount((v + offsets).reshape(-1), minlength=n * c * 256).reshape(n * c, 256)
    return v, hist


def autocontrast(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast`` per channel with an integer cutoff of 0..20 % per image."""
    n, c, h, w = x.shape
    gdev = g.device if g is not None else torch.device("cpu")
    cutoff = torch.randint(0, 21, (n,), generator=g, device=gdev).to(x.device)
    v, hist = _histograms(x)
    total = hist.sum(dim=1, keepdim=True)
    cut = (total * cutoff.repeat_interleave(c)[:, None]) // 100
    idx = torch.arange(256, device=x.device).expand(n * c, 256)
    # after removing `cut` pixels from each end, lo/hi are the first/last non-empty bins
    lo = torch.where(torch.cumsum(hist, 1) > cut, idx, torch.full_like(idx, 256)).min(1, keepdim=True).values
    from_top = torch.cumsum(hist.flip(1), 1).flip(1)
    hi = torch.where(from_top > cut, idx, torch.full_like(idx, -1)).max(1, keepdim=True).values
    # a true division (``255.0 / tensor`` multiplies by a reciprocal and can miss PIL's LUT by 1)
    scale = torch.full(lo.shape, 255.0, dtype=torch.float64, device=x.device).div((hi - lo).clamp(min=1))
    lut = torch.floor(idx.double() * scale + (-lo.double() * scale)).clamp(0, 255).long()
    lut = torch.where(hi > lo, lut, idx)
    return (lut.gather(1, v).to(x.dtype) / 255.0).reshape(n, c, h, w)


def equalize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per channel, on 8-bit values."""
    n, c, h, w = x.shape
    v, hist = _histograms(x)
    # PIL: step = (count - count of the last non-zero bin) // 255; lut = (cumsum_before + step//2) // step
    idx = torch.arange(256, device=x.device).expand(n * c, 256)
    last_bin = torch.where(hist > 0, idx, torch.zeros_like(idx)).max(dim=1, keepdim=True).values
    last_count = hist.gather(1, last_bin)
    step = (hist.sum(dim=1, keepdim=True) - last_count) // 255
    before = torch.cumsum(hist, dim=1) - hist
    safe_step = torch.where(step > 0, step, torch.ones_like(step))
    lut = ((before + safe_step // 2) // safe_step).clamp(max=255)
    lut = torch.where(step > 0, lut, idx)
    out = lut.gather(1, v).to(x.dtype) / 255.0
    return out.reshape(n, c, h, w)


def affine(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Rotate by [-45, 45] degrees, bilinear, fill 0."""
    return rotate(x, _uniform(x, g, -45.0, 45.0), fill=0.0)


OPERATIONS: tuple[tuple[str, Op], ...] = (
    ("gamma", gamma),
    ("brightness", brightness),
    ("sharpen", sharpen),
    ("hue_saturation", hue_saturation),
    ("solarize", solarize),
    ("posterize", posterize),
    ("invert", invert),
    ("autocontrast", autocontrast),
    ("equalize", equalize),
    ("affine", affine),
)


def random_augment(
    textures: torch.Tensor, generator: torch.Generator | None, num_ops: int = 3
) -> torch.Tensor:
    """Apply ``num_ops`` distinct random operations per sample to float textures ``(B, 3, H, W)``."""
    b = textures.shape[0]
    if b == 0 or num_ops <= 0:
        return textures
    gdev = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand((b, len(OPERATIONS)), generator=generator, device=gdev)
    choice = keys.argsort(dim=1)[:, :num_ops].cpu()  # distinct ops, random order
    out = textures.clone()
    for step in range(num_ops):
        for k, (_, op) in enumerate(OPERATIONS):
            idx = (choice[:, step] == k).nonzero().flatten()
            if idx.numel():
                idx = idx.to(out.device)
                out[idx] = op(out[idx], generator)
    return out

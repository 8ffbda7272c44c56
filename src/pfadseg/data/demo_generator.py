"""A built-in synthetic demo dataset in the MVTec AD layout, made procedurally (no downloads).

Categories:

* ``fabric`` (a textured surface): a plain-weave cloth with per-thread colour variation, fibre
  noise, lighting changes and a slightly jittered weave position and angle. Defects: ``hole``,
  ``stain``, ``cut``, ``missing_thread``.
* ``washer`` (an object): a metal tab washer on a conveyor belt, with position, rotation and
  lighting jitter, brushed-metal texture, bevel highlights and a soft shadow. Defects:
  ``scratch``, ``crack``, ``missing_part`` (a chip bitten out of the rim), ``bent_tab``,
  ``contamination``.
* ``strip`` (opt-in, not in ``pfadseg demo``'s default): a rolled steel strip seen by a line-scan
  camera, 512 × 2048 at the default size, rolling marks along it. Defects a few pixels wide:
  ``crack`` (a dark jagged line across the strip), ``pit`` (small round dents), ``scratch`` (a
  long bright slanting line). Squashed to a square input they all but vanish; for the ``tiles``
  input geometry.

None of these defects is a Perlin-shaped texture blend, so the synthesis used in training does
not produce them.

Each image comes from its own random stream ``(seed, category, split, type, index)``: the
clean scene is drawn from it, and the defect from a second, separate stream. Rendering with
``with_defect=False`` therefore gives the defect-free twin of a defective image, and the
defective image differs from its twin exactly on the pixels of its mask (pixels inside a
defect region that would round to their clean value are nudged by a few grey levels).

Layout written by :func:`write_demo_dataset`::

    ROOT/<category>/train/good/000.png ...
    ROOT/<category>/test/good/000.png ...
    ROOT/<category>/test/<defect>/000.png ...
    ROOT/<category>/ground_truth/<defect>/000_mask.png   (0/255)

Files are written atomically; a file whose bytes are already right is left alone, so a re-run
with the same seed is a no-op that leaves identical bytes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pfadseg.data.images import parallel_map
from pfadseg.fileio import write_bytes_atomic

Params = dict
Field = np.ndarray


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo dataset (per category)."""

    size: int = 256
    train_good: int = 80
    test_good: int = 20
    test_defective: int = 32  # spread round-robin over the category's defect types


@dataclass(frozen=True)
class DemoItem:
    """One file of the demo dataset."""

    category: str
    split: str  # "train" or "test"
    defect_type: str  # "good" or a defect type
    index: int  # index within its folder

    @property
    def image_rel(self) -> str:
        return f"{self.category}/{self.split}/{self.defect_type}/{self.index:03d}.png"

    @property
    def mask_rel(self) -> str | None:
        if self.defect_type == "good":
            return None
        return f"{self.category}/ground_truth/{self.defect_type}/{self.index:03d}_mask.png"


# --------------------------------------------------------------------------- helpers


def _grid(height: int, width: int | None = None) -> tuple[Field, Field]:
    """Pixel-centre coordinates ``(y, x)`` as float32 ``(H, W)`` (square when ``width`` is not given)."""
    ty = np.arange(height, dtype=np.float32) + 0.5
    tx = ty if width is None else np.arange(width, dtype=np.float32) + 0.5
    return np.meshgrid(ty, tx, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Field:
    """Smooth random field in about [-1, 1]: a random grid resized bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))


def _polyline_distance(points: np.ndarray, y: Field, x: Field) -> Field:
    """Distance of every pixel to a polyline given as ``(K, 2)`` (y, x) points."""
    best = np.full(y.shape, np.inf, dtype=np.float32)
    for (ay, ax), (by, bx) in zip(points[:-1], points[1:]):
        dy, dx = by - ay, bx - ax
        length2 = max(dy * dy + dx * dx, 1e-6)
        t = np.clip(((y - ay) * dy + (x - ax) * dx) / length2, 0.0, 1.0)
        d = np.hypot(y - (ay + t * dy), x - (ax + t * dx))
        np.minimum(best, d, out=best)
    return best


def _wobbly_radius(rng: np.random.Generator, angle: Field, radius: float, amount: float) -> Field:
    """An irregular blob boundary: ``radius`` modulated by a few random harmonics of the angle."""
    out = np.ones_like(angle)
    for k in range(2, 6):
        out += amount / k * rng.uniform(-1, 1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return radius * out


def _blob(rng: np.random.Generator, y: Field, x: Field, cy: float, cx: float, radius: float, amount: float = 0.35) -> Field:
    """Signed distance (negative inside) to an irregular blob."""
    dy, dx = y - cy, x - cx
    return np.hypot(dy, dx) - _wobbly_radius(rng, np.arctan2(dy, dx), radius, amount)


def _random_walk(rng: np.random.Generator, start: tuple[float, float], direction: float, length: float, steps: int, jitter: float) -> np.ndarray:
    """A jagged polyline from ``start`` heading ``direction`` (radians)."""
    pts = [np.array(start, dtype=np.float32)]
    step = length / steps
    for _ in range(steps):
        direction += rng.uniform(-jitter, jitter)
        pts.append(pts[-1] + step * np.array([math.sin(direction), math.cos(direction)], dtype=np.float32))
    return np.stack(pts)


def _lighting(p: Params, img: Field, y: Field, x: Field) -> Field:
    """Global gain, a linear illumination gradient and sensor noise (all drawn in ``p``)."""
    gy, gx = p["gradient"]
    light = p["gain"] * (1.0 + gy * (y / y.shape[0] - 0.5) + gx * (x / x.shape[1] - 0.5))
    return img * light[..., None] + p["sensor_noise"]


def _to_uint8(img: Field) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- fabric

FABRIC_DEFECTS = ("hole", "stain", "cut", "missing_thread")


def _fabric_params(rng: np.random.Generator, size: int) -> Params:
    """Draw everything a clean fabric image depends on."""
    warp = np.array([0.22, 0.32, 0.52], dtype=np.float32) + rng.normal(0, 0.015, 3).astype(np.float32)
    weft = np.array([0.66, 0.67, 0.68], dtype=np.float32) + rng.normal(0, 0.015, 3).astype(np.float32)
    return {
        "period": size / 32.0 * rng.uniform(0.97, 1.03),
        "angle": math.radians(rng.uniform(-3.0, 3.0)),
        "phase": rng.uniform(0, 64.0, 2),
        "warp": warp,
        "weft": weft,
        "warp_var": rng.normal(0, 0.06, 256).astype(np.float32),
        "weft_var": rng.normal(0, 0.06, 256).astype(np.float32),
        "fibre": 0.05 * _smooth_noise(rng, size, 24) + 0.03 * _smooth_noise(rng, size, 96),
        "gain": rng.uniform(0.88, 1.12),
        "gradient": rng.uniform(-0.10, 0.10, 2),
        "sensor_noise": rng.normal(0, 0.012, (size, size, 3)).astype(np.float32),
    }


def _fabric_fields(p: Params, size: int) -> dict[str, Field]:
    """Weave geometry: thread coordinates, which thread is on top, shaded thread colours."""
    y, x = _grid(size)
    c, s = math.cos(p["angle"]), math.sin(p["angle"])
    u = (x * c + y * s + p["phase"][0]) / p["period"]
    v = (-x * s + y * c + p["phase"][1]) / p["period"]
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    warp_top = (iu + iv) % 2 == 0
    sin_fu, sin_fv = np.sin(np.pi * fu), np.sin(np.pi * fv)
    warp_shade = np.sqrt(sin_fu) * (0.75 + 0.25 * sin_fv) * (1.0 + p["warp_var"][iu % 256])
    weft_shade = np.sqrt(sin_fv) * (0.75 + 0.25 * sin_fu) * (1.0 + p["weft_var"][iv % 256])
    warp_rgb = p["warp"] * (0.35 + 0.65 * warp_shade)[..., None]
    weft_rgb = p["weft"] * (0.35 + 0.65 * weft_shade)[..., None]
    return {"y": y, "x": x, "u": u, "v": v, "iu": iu, "iv": iv, "warp_top": warp_top,
            "warp_rgb": warp_rgb, "weft_rgb": weft_rgb}


def _fabric_render(p: Params, size: int, f: dict[str, Field] | None = None) -> Field:
    """Clean fabric, float ``(S, S, 3)`` before lighting."""
    f = f or _fabric_fields(p, size)
    img = np.where(f["warp_top"][..., None], f["warp_rgb"], f["weft_rgb"])
    return img * (1.0 + p["fibre"])[..., None]


def _fabric_defect(kind: str, p: Params, clean: Field, rng: np.random.Generator, size: int) -> tuple[Field, np.ndarray]:
    """A fabric defect: ``(defective image before lighting, defect region)``."""
    f = _fabric_fields(p, size)
    y, x = f["y"], f["x"]
    margin = size * 0.15
    cy, cx = rng.uniform(margin, size - margin, 2)
    backing = np.array([0.07, 0.07, 0.08], dtype=np.float32)
    if kind == "hole":
        r = rng.uniform(0.03, 0.06) * size
        sd = _blob(rng, y, x, cy, cx, r)
        fray = np.clip(1.0 + sd / 2.5, 0, 1)  # rim of loose fibres just outside the hole
        out = np.where((sd < 0)[..., None], backing + 0.05 * p["fibre"][..., None], clean * (1.0 - 0.45 * fray[..., None]))
        return out, sd < 2.0
    if kind == "stain":
        r = rng.uniform(0.05, 0.1) * size
        sd = _blob(rng, y, x, cy, cx, r, amount=0.5)
        alpha = np.clip(-sd / (0.3 * r), 0, 1) ** 0.7 * rng.uniform(0.7, 0.9)
        tint = np.array([0.50, 0.38, 0.20], dtype=np.float32) * rng.uniform(0.45, 0.85)
        out = clean * (1.0 - alpha[..., None]) + clean * tint * alpha[..., None]
        return out, alpha > 0.2
    if kind == "cut":
        length = rng.uniform(0.15, 0.35) * size
        pts = _random_walk(rng, (cy, cx), rng.uniform(0, 2 * np.pi), length, 6, 0.25)
        d = _polyline_distance(pts, y, x)
        w = rng.uniform(1.0, 1.8)
        out = np.where((d < w)[..., None], backing, np.full_like(clean, 0.85))
        return out, d < w + 1.0
    if kind == "missing_thread":
        along_warp = rng.random() < 0.5
        length = rng.uniform(0.15, 0.45) * size / p["period"]
        index_field, along_field = (f["iu"], f["v"]) if along_warp else (f["iv"], f["u"])
        k = int(np.floor(index_field[int(cy), int(cx)]))
        start = along_field[int(cy), int(cx)]
        on_top = f["warp_top"] if along_warp else ~f["warp_top"]
        region = (index_field == k) & (along_field >= start) & (along_field < start + length) & on_top
        # the crossing threads that ran under the missing one are exposed, with dark gaps
        colour, across = (p["weft"], f["v"]) if along_warp else (p["warp"], f["u"])
        profile = np.sqrt(np.sin(np.pi * (across - np.floor(across))))
        out = colour * (0.2 + 0.7 * profile)[..., None] * (1.0 + p["fibre"])[..., None]
        return out, region
    raise ValueError(f"unknown fabric defect {kind!r}")


# --------------------------------------------------------------------------- washer

WASHER_DEFECTS = ("scratch", "crack", "missing_part", "bent_tab", "contamination")


def _washer_params(rng: np.random.Generator, size: int) -> Params:
    """Draw everything a clean washer image depends on."""
    return {
        "centre": size / 2 + rng.uniform(-0.025, 0.025, 2) * size,
        "tab_jitter": math.radians(rng.uniform(-8.0, 8.0)),
        "tab_bend": 0.0,  # extra angle of a bent tab (defect only)
        "tab_shade": 1.0,  # brightness of the tab (a bent tab catches the light differently)
        "r_out": 0.30 * size * rng.uniform(0.985, 1.015),
        "r_in": 0.14 * size * rng.uniform(0.98, 1.02),
        "tab_len": 0.10 * size,
        "tab_width": 0.10 * size,
        "tab_hole": 0.018 * size,
        "metal": np.array([0.66, 0.66, 0.68], dtype=np.float32) * rng.uniform(0.94, 1.06),
        "light": math.radians(225.0 + rng.uniform(-20.0, 20.0)),
        "background": np.array([0.27, 0.30, 0.34], dtype=np.float32) * rng.uniform(0.92, 1.08),
        "bg_noise": 0.06 * _smooth_noise(rng, size, 8) + 0.03 * _smooth_noise(rng, size, 64),
        "brushed": rng.normal(0, 0.035, 720).astype(np.float32),
        "ring_phase": rng.uniform(0, 2 * np.pi),
        "metal_noise": 0.03 * _smooth_noise(rng, size, 48),
        "shadow_offset": rng.uniform(2.0, 4.0, 2),
        "gain": rng.uniform(0.9, 1.1),
        "gradient": rng.uniform(-0.08, 0.08, 2),
        "sensor_noise": rng.normal(0, 0.01, (size, size, 3)).astype(np.float32),
        "bites": (),
    }


def _tab_angle(p: Params) -> float:
    """Direction of the tab (radians, image coordinates)."""
    return math.radians(-60.0) + p["tab_jitter"] + p["tab_bend"]


def _tab_sdf(p: Params, y: Field, x: Field) -> Field:
    """Signed distance to the tab rectangle (without the ring)."""
    cy, cx = p["centre"]
    dy, dx = y - cy, x - cx
    a = _tab_angle(p)
    t = dx * math.cos(a) + dy * math.sin(a)
    n = -dx * math.sin(a) + dy * math.cos(a)
    t0, t1 = (p["r_in"] + p["r_out"]) / 2, p["r_out"] + p["tab_len"]
    return np.maximum(np.abs(n) - p["tab_width"] / 2, np.maximum(t - t1, t0 - t))


def _washer_sdf(p: Params, y: Field, x: Field) -> Field:
    """Signed distance to the washer outline (negative inside), chips included."""
    cy, cx = p["centre"]
    dy, dx = y - cy, x - cx
    r = np.hypot(dy, dx)
    ring = np.maximum(r - p["r_out"], p["r_in"] - r)
    a = _tab_angle(p)
    t = dx * math.cos(a) + dy * math.sin(a)
    n = -dx * math.sin(a) + dy * math.cos(a)
    box = _tab_sdf(p, y, x)
    hole = p["tab_hole"] - np.hypot(t - (p["r_out"] + 0.55 * p["tab_len"]), n)
    sd = np.maximum(np.minimum(ring, box), hole)
    for by, bx, br in p["bites"]:
        sd = np.maximum(sd, br - np.hypot(y - by, x - bx))
    return sd


def _washer_render(p: Params, size: int) -> Field:
    """Clean (or geometry-altered) washer scene, float ``(S, S, 3)`` before lighting."""
    y, x = _grid(size)
    sd = _washer_sdf(p, y, x)
    alpha = np.clip(0.5 - sd, 0.0, 1.0)
    gy, gx = np.gradient(sd)
    ly, lx = math.sin(p["light"]), math.cos(p["light"])
    bevel = np.clip(1.0 + sd / 3.0, 0.0, 1.0) * np.clip(-(gy * ly + gx * lx), -1.0, 1.0)
    cy, cx = p["centre"]
    r = np.hypot(y - cy, x - cx)
    theta = np.arctan2(y - cy, x - cx)
    brushed = p["brushed"][((theta + np.pi) / (2 * np.pi) * 720).astype(np.int64) % 720]
    rings = 0.02 * np.sin(r * 2 * np.pi / 2.3 + p["ring_phase"])
    shade = 1.0 + brushed + rings + p["metal_noise"] + 0.28 * bevel
    if p["tab_shade"] != 1.0:
        shade = np.where((_tab_sdf(p, y, x) < 1.0) & (r > p["r_out"] - 1.0), shade * p["tab_shade"], shade)
    metal = p["metal"] * shade[..., None]
    oy, ox = p["shadow_offset"]
    shadow = ndimage.gaussian_filter(ndimage.shift(alpha, (oy, ox), order=1), 3.0) * 0.45
    bg = p["background"] * ((1.0 + p["bg_noise"]) * (1.0 - shadow))[..., None]
    return bg * (1.0 - alpha[..., None]) + metal * alpha[..., None]


def _object_mask(p: Params, size: int) -> np.ndarray:
    y, x = _grid(size)
    return _washer_sdf(p, y, x) < -1.0


def _washer_defect(kind: str, p: Params, clean: Field, rng: np.random.Generator, size: int) -> tuple[Field, np.ndarray]:
    """A washer defect: ``(defective image before lighting, defect region)``."""
    y, x = _grid(size)
    cy, cx = p["centre"]
    obj = _object_mask(p, size)
    mid = (p["r_in"] + p["r_out"]) / 2
    phi = _tab_angle(p) + rng.uniform(0.6, 2 * np.pi - 0.6)  # a ring angle away from the tab
    if kind == "scratch":
        length = rng.uniform(0.1, 0.22) * size
        py, px = cy + mid * math.sin(phi), cx + mid * math.cos(phi)
        direction = rng.uniform(0, np.pi)
        half = 0.5 * length * np.array([math.sin(direction), math.cos(direction)])
        pts = np.stack([np.array([py, px]) - half, np.array([py, px]) + half])
        d = _polyline_distance(pts, y, x)
        w = rng.uniform(1.1, 1.8)
        delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.22, 0.32)
        profile = np.clip(1.0 - d / (w + 1.0), 0, 1)
        out = clean + delta * profile[..., None]
        return out, (d < w + 0.5) & obj
    if kind == "crack":
        inner = rng.random() < 0.5
        rr = p["r_in"] if inner else p["r_out"]
        start = (cy + rr * math.sin(phi), cx + rr * math.cos(phi))
        direction = phi if inner else phi + np.pi
        pts = _random_walk(rng, start, direction, rng.uniform(0.45, 0.8) * (p["r_out"] - p["r_in"]), 7, 0.6)
        d = _polyline_distance(pts, y, x)
        w = rng.uniform(1.1, 1.8)
        out = clean * np.clip(0.15 + 0.85 * d / (w + 0.8), 0.15, 1.0)[..., None]
        return out, (d < w + 0.5) & obj
    if kind == "missing_part":
        br = rng.uniform(0.035, 0.06) * size
        rr = p["r_out"] + rng.uniform(-0.1, 0.4) * br
        bites = ((cy + rr * math.sin(phi), cx + rr * math.cos(phi), br),)
        out = _washer_render({**p, "bites": bites}, size)
        return out, np.abs(out - clean).max(axis=2) > 0.015
    if kind == "bent_tab":
        # bent away from the nominal direction, beyond the jitter of good parts (±8 degrees)
        sign = 1.0 if p["tab_jitter"] >= 0 else -1.0
        bend = sign * math.radians(rng.uniform(16.0, 28.0))
        shade = rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.12, 1.25)])
        out = _washer_render({**p, "tab_bend": bend, "tab_shade": shade}, size)
        return out, np.abs(out - clean).max(axis=2) > 0.015
    if kind == "contamination":
        py, px = cy + mid * math.sin(phi), cx + mid * math.cos(phi)
        alpha = np.zeros_like(y)
        for _ in range(rng.integers(1, 5)):
            oy, ox = rng.normal(0, 0.02 * size, 2)
            sd = _blob(rng, y, x, py + oy, px + ox, rng.uniform(0.02, 0.04) * size, amount=0.5)
            alpha = np.maximum(alpha, np.clip(-sd / 2.0 + 0.5, 0, 1))
        alpha *= rng.uniform(0.7, 0.9)
        dirt = np.array([0.20, 0.15, 0.10], dtype=np.float32)
        out = clean * (1.0 - alpha[..., None]) + dirt * alpha[..., None]
        return out, (alpha > 0.25) & obj
    raise ValueError(f"unknown washer defect {kind!r}")


# --------------------------------------------------------------------------- strip

STRIP_DEFECTS = ("crack", "pit", "scratch")


def _strip_shape(size: int) -> tuple[int, int]:
    """A line-scan strip: twice ``size`` high, eight times wide (512 × 2048 at the default size)."""
    return 2 * size, 8 * size


def _strip_params(rng: np.random.Generator, size: int) -> Params:
    """Draw everything a clean strip image depends on."""
    h, w = _strip_shape(size)
    return {
        "steel": np.array([0.56, 0.57, 0.60], dtype=np.float32) * rng.uniform(0.95, 1.05),
        # rolling marks: thin streaks along the strip, each row its own shade, drifting slowly along it
        "streaks": 0.05 * rng.normal(0, 1, (h, 1)).astype(np.float32) * (1.0 + 0.3 * _smooth_noise(rng, w, 6)[:1]),
        "grain": 0.04 * np.asarray(Image.fromarray(_smooth_noise(rng, 64, 60), mode="F").resize((w, h), Image.BICUBIC)),
        "gain": rng.uniform(0.92, 1.08),
        "gradient": rng.uniform(-0.08, 0.08, 2),
        "sensor_noise": rng.normal(0, 0.01, (h, w, 3)).astype(np.float32),
    }


def _strip_render(p: Params, size: int) -> Field:
    """Clean strip, float ``(H, W, 3)`` before lighting."""
    return p["steel"] * (1.0 + p["streaks"] + p["grain"])[..., None]


def _strip_defect(kind: str, p: Params, clean: Field, rng: np.random.Generator, size: int) -> tuple[Field, np.ndarray]:
    """A strip defect a few pixels wide: ``(defective image before lighting, defect region)``."""
    h, w = _strip_shape(size)
    y, x = _grid(h, w)
    cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.05 * w, 0.95 * w)
    if kind == "crack":  # a dark jagged line across the rolling direction, 2–3 pixels wide
        pts = _random_walk(rng, (cy, cx), math.pi / 2 + rng.uniform(-0.5, 0.5), rng.uniform(0.25, 0.6) * h, 10, 0.5)
        d = _polyline_distance(pts, y, x)
        half = rng.uniform(0.8, 1.4)
        depth = np.clip(1.2 - d / half, 0, 1)[..., None]
        return clean * (1.0 - 0.7 * depth), d < half + 0.5
    if kind == "pit":  # one to three small round dents: a dark bottom and a bright rim on the lit side
        region = np.zeros((h, w), dtype=bool)
        out = clean.copy()
        for _ in range(rng.integers(1, 4)):
            py, px, r = cy + rng.uniform(-12, 12), cx + rng.uniform(-30, 30), rng.uniform(1.5, 3.5)
            d = np.hypot(y - py, x - px)
            out = np.where((d < r)[..., None], clean * 0.35, np.where((d < r + 1.2)[..., None] & (y < py)[..., None], clean * 1.35, out))
            region |= d < r + 1.5
        return out, region
    if kind == "scratch":  # a long bright line, 1–2 pixels wide, slanting across the rolling marks
        angle = rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)
        length = rng.uniform(0.08, 0.2) * w
        pts = _random_walk(rng, (cy, cx - length / 2 * math.cos(angle)), angle, length, 4, 0.05)
        d = _polyline_distance(pts, y, x)
        half = rng.uniform(0.5, 0.9)
        return np.where((d < half)[..., None], np.minimum(clean * 1.45, 1.0), clean), d < half + 0.5
    raise ValueError(f"unknown strip defect {kind!r}")


# --------------------------------------------------------------------------- registry


def _square(size: int) -> tuple[int, int]:
    return size, size


@dataclass(frozen=True)
class _Category:
    defects: tuple[str, ...]
    params: Callable[[np.random.Generator, int], Params]
    render: Callable[[Params, int], Field]
    defect: Callable[[str, Params, Field, np.random.Generator, int], tuple[Field, np.ndarray]]
    shape: Callable[[int], tuple[int, int]] = _square  # (height, width) of an image at the dataset's size


_CATEGORIES: dict[str, _Category] = {
    "fabric": _Category(FABRIC_DEFECTS, _fabric_params, _fabric_render, _fabric_defect),
    "washer": _Category(WASHER_DEFECTS, _washer_params, _washer_render, _washer_defect),
    "strip": _Category(STRIP_DEFECTS, _strip_params, _strip_render, _strip_defect, _strip_shape),
}
#: What ``pfadseg demo`` trains by default; ``strip`` (high resolution, thin defects) is asked for by name.
DEMO_CATEGORIES: tuple[str, ...] = ("fabric", "washer")
_SPLITS = {"train": 0, "test": 1}


def _streams(seed: int, item: DemoItem) -> tuple[np.random.Generator, np.random.Generator]:
    """The scene stream and the separate defect stream of one item."""
    cat = _CATEGORIES[item.category]
    type_id = 0 if item.defect_type == "good" else 1 + cat.defects.index(item.defect_type)
    key = [int(seed), list(_CATEGORIES).index(item.category), _SPLITS[item.split], type_id, item.index]
    return np.random.default_rng(key + [0]), np.random.default_rng(key + [1])


def render_demo_item(item: DemoItem, seed: int = 0, size: int = 256, with_defect: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Render one item: ``(RGB uint8 (H, W, 3), mask bool (H, W))``, square (S, S) except for ``strip``.

    ``with_defect=False`` renders the defect-free twin (same scene, no defect, empty mask).
    """
    cat = _CATEGORIES[item.category]
    scene_rng, defect_rng = _streams(seed, item)
    p = cat.params(scene_rng, size)
    clean = cat.render(p, size)
    y, x = _grid(*cat.shape(size))
    clean_u8 = _to_uint8(_lighting(p, clean, y, x))
    if item.defect_type == "good" or not with_defect:
        return clean_u8, np.zeros(y.shape, dtype=bool)
    defective, region = cat.defect(item.defect_type, p, clean, defect_rng, size)
    out = np.where(region[..., None], _to_uint8(_lighting(p, defective, y, x)), clean_u8)
    unchanged = region & (out == clean_u8).all(axis=2)
    if unchanged.any():  # make every defect pixel really differ from the clean twin
        c = clean_u8[unchanged].astype(np.int16)
        out[unchanged] = np.where(c > 127, c - 12, c + 12).astype(np.uint8)
    return out, region


def demo_items(category: str, config: DemoConfig | None = None) -> list[DemoItem]:
    """All items of ``category`` in writing order."""
    config = config or DemoConfig()
    defects = _CATEGORIES[category].defects
    items = [DemoItem(category, "train", "good", i) for i in range(config.train_good)]
    items += [DemoItem(category, "test", "good", i) for i in range(config.test_good)]
    counts = {d: 0 for d in defects}
    for i in range(config.test_defective):
        d = defects[i % len(defects)]
        items.append(DemoItem(category, "test", d, counts[d]))
        counts[d] += 1
    return items


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write, skipped when the file already holds exactly ``data``."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_bytes_atomic(path, data)


def write_demo_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    config: DemoConfig | None = None,
    categories: tuple[str, ...] | None = None,
    workers: int | None = None,
) -> list[str]:
    """Write the demo categories under ``root`` in the MVTec layout; returns the category names."""
    config = config or DemoConfig()
    root = Path(root)
    names = list(categories or DEMO_CATEGORIES)
    unknown = [n for n in names if n not in _CATEGORIES]
    if unknown:
        raise ValueError(f"unknown demo category {unknown[0]!r} (available: {', '.join(_CATEGORIES)})")

    def write(item: DemoItem) -> None:
        image, mask = render_demo_item(item, seed, config.size)
        _write_if_changed(root / item.image_rel, _png_bytes(image))
        if item.mask_rel is not None:
            _write_if_changed(root / item.mask_rel, _png_bytes(mask.astype(np.uint8) * 255))

    items = [item for name in names for item in demo_items(name, config)]
    parallel_map(write, items, workers)  # each item has its own random streams: order-free
    return names

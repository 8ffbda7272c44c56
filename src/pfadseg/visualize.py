"""Pictures of where the defect is: colour maps and heat-map overlays (NumPy + Pillow only)."""

from __future__ import annotations

import numpy as np

# Matplotlib's "jet" as five linear pieces (dark blue → blue → cyan → yellow → red → dark red).
_JET_X = np.array([0.0, 0.11, 0.125, 0.34, 0.35, 0.375, 0.64, 0.65, 0.66, 0.89, 0.91, 1.0])
_JET_R = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5])
_JET_G = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
_JET_B = np.array([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(H, W) values → (H, W, 3) uint8 jet colours, ``vmin`` blue to ``vmax`` red."""
    t = np.clip((values.astype(np.float64) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgb = np.stack([np.interp(t, _JET_X, c) for c in (_JET_R, _JET_G, _JET_B)], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Blend the coloured map over an RGB uint8 image of the same height and width."""
    heat = colorize(anomaly_map, vmin, vmax).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha + 0.5).astype(np.uint8)


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """Draw the one-pixel boundary of a boolean mask onto a copy of an RGB image."""
    m = mask.astype(bool)
    interior = m.copy()
    interior[1:, :] &= m[:-1, :]
    interior[:-1, :] &= m[1:, :]
    interior[:, 1:] &= m[:, :-1]
    interior[:, :-1] &= m[:, 1:]
    out = image.copy()
    out[m & ~interior] = color
    return out


def comparison_row(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """image | image with the ground truth outlined in green | heat-map overlay, side by side."""
    return np.concatenate([image, outline(image, mask, (0, 255, 0)), overlay(image, anomaly_map)], axis=1)

"""Pictures of where the defect is: colour maps, heat-map overlays and labelled comparison rows (NumPy + Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def comparison_tiles(case: Case) -> list[np.ndarray]:
    """The image, the image with the ground truth outlined in green, and a heat-map overlay per map (the output's last)."""
    maps = [m for _, m in case.branch_maps] + [case.anomaly_map]
    return [case.image, outline(case.image, case.mask, (0, 255, 0))] + [overlay(case.image, m) for m in maps]


# ---------------------------------------------------------------------------------- labelled rows

COLUMN_TITLES = ("image", "ground truth", "anomaly map")
COLOUR_BAR_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
FONT_SIZE = 13
MARGIN = 10  # around the picture
GAP = 6  # between tiles and between rows
BAR_WIDTH = 14
BACKGROUND = (255, 255, 255)
INK = (34, 34, 34)
MUTED = (100, 100, 100)
DECISION_FILL = {"OK": (30, 130, 60), "NG": (200, 30, 30)}


@dataclass
class Case:
    """One test image to draw: the image, its ground truth, the model's map, what the image is and how it scored."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    anomaly_map: np.ndarray  # (H, W) float, 0 to 1
    defect_type: str  # "good" for a normal image
    score: float
    branch_maps: tuple[tuple[str, np.ndarray], ...] = ()  # (title, map) of the maps fused into anomaly_map, drawn before it


def decision(score: float, threshold: float) -> str:
    """NG (flagged as defective) when the image score is at or above the image threshold, else OK."""
    return "NG" if score >= threshold else "OK"


def labelled_rows(cases: Sequence[Case], threshold: float) -> Image.Image:
    """image | ground truth | anomaly map for each case under column titles, with a colour bar for the maps.

    Cases with ``branch_maps`` get a column for each before the anomaly map (all cases alike, as the first).

    Above each row a caption names the defect type (or "good"), the image score and the OK/NG
    decision at ``threshold``, so that a picture can be read without the run that made it.
    """
    font = ImageFont.load_default(size=FONT_SIZE)
    h, w = cases[0].image.shape[:2]
    line = font.getbbox("Ag")[3]
    header, caption = line + GAP, line + 2 * GAP
    titles = COLUMN_TITLES[:2] + tuple(title for title, _ in cases[0].branch_maps) + COLUMN_TITLES[2:]
    columns = [MARGIN + c * (w + GAP) for c in range(len(titles))]
    bar_left = columns[-1] + w + 2 * GAP
    tick_labels = [f"{t:g}" for t in COLOUR_BAR_TICKS]
    width = bar_left + BAR_WIDTH + GAP + max(font.getbbox(t)[2] for t in tick_labels) + MARGIN
    top = MARGIN + header
    height = top + len(cases) * (caption + h) + (len(cases) - 1) * GAP + MARGIN
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for left, title in zip(columns, titles):
        draw.text((left + w // 2, MARGIN), title, fill=INK, font=font, anchor="mt")
    for n, case in enumerate(cases):
        row_top = top + n * (caption + h + GAP)
        _draw_caption(draw, font, case, threshold, (MARGIN, row_top, columns[-1] + w, row_top + caption))
        for left, tile in zip(columns, comparison_tiles(case)):
            picture.paste(Image.fromarray(tile), (left, row_top + caption))
    _draw_colour_bar(picture, draw, font, (bar_left, top + caption), h, tick_labels)
    return picture


def _draw_caption(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont, case: Case, threshold: float,
                  box: tuple[int, int, int, int]) -> None:
    """Defect type on the left; score, threshold and an OK/NG badge on the right of ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    middle = (top + bottom) // 2
    draw.text((left, middle), case.defect_type, fill=INK, font=font, anchor="lm")
    verdict = decision(case.score, threshold)
    badge = draw.textbbox((right, middle), verdict, font=font, anchor="rm")
    badge = (badge[0] - 2 * GAP, top + 1, right, bottom - 1)
    draw.rounded_rectangle(badge, radius=4, fill=DECISION_FILL[verdict])
    draw.text(((badge[0] + badge[2]) // 2, middle), verdict, fill=BACKGROUND, font=font, anchor="mm")
    draw.text((badge[0] - GAP, middle), f"score {case.score:.4f}  (threshold {threshold:.4f})", fill=MUTED, font=font, anchor="rm")


def _draw_colour_bar(picture: Image.Image, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont, corner: tuple[int, int],
                     height: int, tick_labels: list[str]) -> None:
    """The heat map's colours from 1 (top) to 0 (bottom) beside the first row, with a tick and label per value."""
    left, top = corner
    values = np.repeat(np.linspace(1.0, 0.0, height)[:, None], BAR_WIDTH, axis=1)
    picture.paste(Image.fromarray(colorize(values)), (left, top))
    draw.rectangle((left - 1, top - 1, left + BAR_WIDTH, top + height), outline=MUTED)
    for value, label in zip(COLOUR_BAR_TICKS, tick_labels):
        y = top + round((1 - value) * (height - 1))
        draw.line((left + BAR_WIDTH, y, left + BAR_WIDTH + GAP // 2, y), fill=MUTED)
        draw.text((left + BAR_WIDTH + GAP, y), label, fill=INK, font=font, anchor="lm")

"""One study at a glance: the radiograph with the final mask's outline, the probability map as heat,
and the decision with its reason and warning written under them.

:func:`render_overlay` returns an RGB image (uint8 (H', W', 3)): two panels of ``panel`` px width
side by side (left: the radiograph and the final mask's outline in yellow; right: the radiograph
under the probability map, transparent below p = 0.1, then a heat scale), and a text band (title,
one line per reason part, the warning on red). :func:`thumbnail` shrinks it for the review page.
Pure numpy / Pillow: no model, no file.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = ["render_overlay", "thumbnail", "heat_colors", "panel_rows"]

OUTLINE = (255, 212, 0)
WARN_BG, WARN_FG = (176, 0, 32), (255, 255, 255)
TEXT_BG, TEXT_FG = (24, 24, 28), (235, 235, 240)
LINE_PX, FONT_PX = 20, 15
HEAT_FROM = 26  # q of p = 0.1: the heat is transparent below


@lru_cache(maxsize=1)
def heat_colors() -> np.ndarray:
    """(256, 3) float32 heat scale for q = round(p * 255): dark red -> red -> orange -> yellow -> white."""
    stops = np.array(
        [[0, 80, 0, 0], [0.35, 200, 0, 0], [0.6, 255, 110, 0], [0.85, 255, 230, 0], [1, 255, 255, 220]]
    )
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=1).astype(np.float32)


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _panel_size(shape: tuple[int, int], panel: int) -> tuple[int, int]:
    """(width, height) of a panel ``panel`` px wide keeping the image's aspect ratio."""
    h, w = shape
    return panel, max(1, round(panel * h / w))


def panel_rows(shape: tuple[int, int], panel: int = 512) -> int:
    """Rows of the panels of a :func:`render_overlay` image of an image of ``shape`` (H, W)."""
    return _panel_size(shape, panel)[1]


def _outline(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: a 2 px outline of ``mask`` (H, W) bool at the panel ``size`` (w, h)."""
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    if not small.any():
        return small
    inner = ndimage.binary_erosion(small, iterations=2)
    return small & ~inner


def _panels(image: np.ndarray, prob_map: np.ndarray, mask: np.ndarray, panel: int) -> np.ndarray:
    """(h, 2 * panel, 3) uint8: outline panel | heat panel (heat blended only where p >= 0.1)."""
    size = _panel_size(image.shape, panel)
    gray = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0))
    base = np.repeat(gray[..., None], 3, axis=2)
    left, right = base.copy(), base.copy()
    left[_outline(mask, size)] = OUTLINE
    q = np.asarray(Image.fromarray(prob_map).resize(size, Image.BILINEAR, reducing_gap=2.0))
    hot = q >= HEAT_FROM
    if hot.any():
        alpha = (np.clip((q[hot] - 25.5) / 102.0, 0, 1) * 0.65)[:, None]
        blend = base[hot] * (1 - alpha) + heat_colors()[q[hot]] * alpha
        right[hot] = blend.round().clip(0, 255).astype(np.uint8)
    return np.concatenate([left, right], axis=1)


def _wrap(lines: list[str], width_px: int) -> list[str]:
    chars = max(20, width_px // 8)
    return [part for line in lines for part in (textwrap.wrap(line, chars) or [""])]


def render_overlay(
    image: np.ndarray,
    prob_map: np.ndarray,
    mask: np.ndarray,
    title: str,
    lines: list[str],
    warning: str = "",
    panel: int = 512,
) -> np.ndarray:
    """RGB (h + text, 2 * panel, 3) uint8 of one study: image (H, W) uint8, prob_map (H, W) uint8
    (q = round(p * 255)), mask (H, W) bool; ``title`` and ``lines`` (the reason) under the panels
    (their h rows come first, for :func:`thumbnail`), ``warning`` (when not empty) on red."""
    if image.shape != prob_map.shape or image.shape != mask.shape:
        raise ValueError(f"image {image.shape}, map {prob_map.shape} and mask {mask.shape} differ")
    top = Image.fromarray(_panels(image, prob_map, mask, panel))
    for x, label in ((6, "final mask (outline)"), (panel + 6, "probability map (heat from p 0.1)")):
        ImageDraw.Draw(top).text(
            (x, 4), label, fill=OUTLINE, font=_font(FONT_PX), stroke_width=2, stroke_fill=(0, 0, 0)
        )
    top = np.asarray(top)
    width = top.shape[1]
    body = _wrap([title, *lines], width - 16)
    warn = _wrap([f"WARNING: {warning}"], width - 16) if warning else []
    band = Image.new("RGB", (width, LINE_PX * (len(body) + len(warn)) + 12), TEXT_BG)
    draw = ImageDraw.Draw(band)
    y = 6
    for k, text in enumerate(body):
        draw.text((8, y), text, fill=(255, 255, 255) if k == 0 else TEXT_FG, font=_font(FONT_PX))
        y += LINE_PX
    if warn:
        draw.rectangle([0, y - 2, width, y + LINE_PX * len(warn) + 2], fill=WARN_BG)
        for text in warn:
            draw.text((8, y), text, fill=WARN_FG, font=_font(FONT_PX))
            y += LINE_PX
    return np.concatenate([top, np.asarray(band)], axis=0)


def thumbnail(overlay: np.ndarray, panel_rows: int, width: int = 320) -> np.ndarray:
    """The panels (first ``panel_rows`` rows) of a :func:`render_overlay` image shrunk to ``width`` px."""
    top = Image.fromarray(overlay[:panel_rows])
    size = (width, max(1, round(width * panel_rows / top.width)))
    return np.asarray(top.resize(size, Image.BILINEAR, reducing_gap=2.0))

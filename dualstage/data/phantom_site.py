"""A second hospital for the phantoms: what sites differ in, applied after rendering.

A :class:`Site` shifts what differs between hospitals while the anatomy and the lesions keep
their meaning (the masks move with the pixels):

* **exposure and contrast**: a gamma curve and a narrower grey range about the image mean;
* **noise**: extra Gaussian detector noise;
* **image size and aspect**: the square rendering (side = ``--size``) is extended to a portrait
  detector (``aspect`` = height / width): more neck above and abdomen below (the edge rows carried
  on); pixel spacing is unchanged, so the field of view grows and a lung covers a smaller share of
  the image;
* **MONOCHROME1 storage**: a share of the DICOM files store inverted pixels with Photometric
  Interpretation MONOCHROME1 (the reader inverts them back);
* **subtler lesions**: the lesion contrast is scaled down and more positives keep the default,
  subtle look (relative to the ``--lesion-contrast`` / ``--subtle-share`` given);
* **support lines**: extra ECG wires and tubes drawn over the chest (bright curves, some across
  a lung).

``SITES`` lists the sites by name; ``source`` changes nothing. Everything is drawn from the
site's own stream of ``(seed, index)``, so a site's output does not depend on the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Site", "SITES", "get_site", "site_contrast", "apply_site", "SiteLook"]

_SITE_STREAM = 7  # spawn key of the site's stream (phantom_cases uses others)


@dataclass(frozen=True)
class Site:
    """What one site's radiographs differ in; ``source`` (all defaults) changes nothing."""

    name: str
    aspect: float = 1.0  # output height / width (>= 1: portrait detector, padded above and below)
    gamma: tuple[float, float] = (1.0, 1.0)  # exposure curve x -> x ** gamma, drawn per image
    contrast: tuple[float, float] = (1.0, 1.0)  # grey range scale about the image mean, per image
    noise: float = 0.0  # extra Gaussian noise sd, grey levels
    monochrome1: float = 0.0  # share of DICOM files stored as MONOCHROME1
    lesion_contrast_factor: float = 1.0  # lesion contrast x this (subtler lesions: < 1)
    subtle_share_add: float = 0.0  # added to the share of positives at the default (subtle) look
    support_lines: float = 0.0  # mean number of extra wires / tubes per image (Poisson)


SITES: dict[str, Site] = {
    "source": Site("source"),
    "shifted": Site(
        "shifted",
        aspect=1.25,
        gamma=(1.15, 1.45),
        contrast=(0.7, 0.85),
        noise=5.0,
        monochrome1=0.5,
        lesion_contrast_factor=0.75,
        subtle_share_add=0.15,
        support_lines=2.5,
    ),
}


def get_site(name: str | None) -> Site:
    """The site called ``name`` (None: ``source``); ValueError listing the valid names."""
    if name is None:
        return SITES["source"]
    if name not in SITES:
        raise ValueError(f"unknown phantom site {name!r}; valid sites: {', '.join(SITES)}")
    return SITES[name]


def site_contrast(site: Site, lesion_contrast: float, subtle_share: float) -> tuple[float, float]:
    """(lesion contrast, subtle share) at ``site``: the contrast never drops below the default look 1."""
    contrast = max(1.0, 1.0 + (lesion_contrast - 1.0) * site.lesion_contrast_factor)
    return contrast, float(min(1.0, subtle_share + site.subtle_share_add))


@dataclass(frozen=True)
class SiteLook:
    """How one image is stored at its site."""

    monochrome1: bool  # store inverted pixels as MONOCHROME1
    square: int  # side of the rendered square (its pixel spacing is the image's)


def _lines(image: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` smooth bright wires / tubes (quadratic Bezier curves) over uint8 ``image`` (H, W)."""
    h, w = image.shape
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    t = np.linspace(0, 1, 48)[:, None]
    for _ in range(n):
        p = rng.uniform([0.1 * w, 0.0], [0.9 * w, h], size=(3, 2))
        p[2] = [rng.uniform(0, w), h if rng.random() < 0.5 else 0.0]
        pts = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
        width = max(1, round(w / 512 * (4 if rng.random() < 0.3 else 1.5)))
        draw.line([tuple(q) for q in pts], fill=int(rng.integers(190, 250)), width=width)
    return np.asarray(im)


def apply_site(
    image: np.ndarray, masks: list[np.ndarray], site: Site, seed: int, index: int
) -> tuple[np.ndarray, list[np.ndarray], SiteLook]:
    """(image (H, W) uint8, masks (H, W) bool, look) of one rendered square image at ``site``."""
    side = image.shape[0]
    if site == SITES["source"]:
        return image, masks, SiteLook(False, side)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SITE_STREAM, index)))
    x = (image.astype(np.float64) / 255.0) ** rng.uniform(*site.gamma)
    x = x.mean() + (x - x.mean()) * rng.uniform(*site.contrast)
    x = 255.0 * x + rng.standard_normal(x.shape) * site.noise
    height = int(round(side * site.aspect))
    top = (height - side) // 2
    if height > side:  # a taller detector: more neck above, more abdomen below (edge rows extended)
        rows = ((top, height - side - top), (0, 0))
        added = (np.arange(height) < top) | (np.arange(height) >= top + side)
        x = np.pad(x, rows, mode="edge") + rng.standard_normal((height, side)) * 2.0 * added[:, None]
        masks = [np.pad(m, rows) for m in masks]
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    out = _lines(out, rng, int(rng.poisson(site.support_lines)))
    return out, masks, SiteLook(bool(rng.random() < site.monochrome1), side)

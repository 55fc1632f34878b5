"""Phantom anatomy in body coordinates: pose, lung outlines and pneumothorax lesions with their masks.

Body coordinates are normalised to [0, 1] (x to the image right, y down); :class:`Pose` maps
them to image coordinates. :func:`place_lesions` fits each crescent's depth so its mask has the
planned area. Rendering (densities, vessels, ribs, devices) is in :mod:`dualstage.data.phantom_render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dualstage.data.phantom_cases import MAX_DEPTH, TWO_PI, CaseSpec

__all__ = [
    "TABLE_N",
    "TABLE_THETA",
    "Pose",
    "Lung",
    "Lesion",
    "make_lungs",
    "place_lesions",
    "pixel_block",
    "body_coords",
]


# ----------------------------------------------------------------------------- geometry
@dataclass
class Pose:
    """Similarity transform body coords -> image coords, both normalised to [0, 1]."""

    rot: float
    scale: float
    tx: float
    ty: float

    def to_body(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.rot), math.sin(self.rot)
        dx, dy = (x - 0.5 - self.tx) / self.scale, (y - 0.5 - self.ty) / self.scale
        return 0.5 + c * dx + s * dy, 0.5 - s * dx + c * dy

    def to_image(self, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.rot), math.sin(self.rot)
        dx, dy = bx - 0.5, by - 0.5
        return 0.5 + self.tx + self.scale * (c * dx - s * dy), 0.5 + self.ty + self.scale * (s * dx + c * dy)


TABLE_N = 360
TABLE_THETA = np.linspace(-math.pi, math.pi, TABLE_N, endpoint=False)


@dataclass
class Lung:
    """A lung in local polar coords: theta 0 lateral, -pi/2 apex, +pi/2 base, +-pi medial."""

    cx: float
    cy: float
    ax: float
    ay: float
    out: float  # -1 for the image-left lung (lateral is -x), +1 for the image-right lung
    outline: np.ndarray  # (P, 2) closed boundary in body coords, densely sampled
    table: np.ndarray | None = None  # (360,) boundary radius per angle around (cx, cy), local units

    def __post_init__(self) -> None:
        if self.table is None:
            lx = (self.outline[:, 0] - self.cx) * self.out / self.ax
            ly = (self.outline[:, 1] - self.cy) / self.ay
            th, rr = np.arctan2(ly, lx), np.hypot(lx, ly)
            # nearest wall crossing per angle bin (the outline need not be star-shaped from here)
            bins = ((th + math.pi) / TWO_PI * TABLE_N).astype(int) % TABLE_N
            table = np.full(TABLE_N, np.inf)
            np.minimum.at(table, bins, rr)
            ok = np.isfinite(table)
            table = np.interp(TABLE_THETA, TABLE_THETA[ok], table[ok], period=TWO_PI)
            self.table = table.astype(np.float32)

    def about(self, cx: float, cy: float) -> Lung:
        """The same lung seen from another centre (e.g. the hilum)."""
        return Lung(cx, cy, self.ax, self.ay, self.out, self.outline)

    def polar(self, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local (rho, theta, boundary radius r(theta)) for body coords; arrays like bx."""
        lx = (bx - self.cx) * (self.out / self.ax)
        ly = (by - self.cy) * (1.0 / self.ay)
        theta = np.arctan2(ly, lx)
        r = np.interp(theta, TABLE_THETA, self.table, period=TWO_PI).astype(np.float32)
        return np.hypot(lx, ly), theta, r

    def radial_px(self, theta: np.ndarray, px_per_unit: float) -> np.ndarray:
        """Pixels per local radial unit at angle theta."""
        return px_per_unit * np.hypot(self.ax * np.cos(theta), self.ay * np.sin(theta))


# lung outlines (body coords, chest half-width 0.44, apex at y 0.17); the costophrenic corner is
# repeated so that corner-cutting keeps it sharp
_RIGHT_LUNG = [
    (0.29, 0.165),
    (0.35, 0.18),
    (0.405, 0.23),
    (0.425, 0.32),
    (0.43, 0.45),
    (0.425, 0.56),
    (0.415, 0.64),
    (0.37, 0.645),
    (0.30, 0.625),
    (0.22, 0.64),
    (0.15, 0.69),
    (0.095, 0.755),
    (0.095, 0.755),
    (0.095, 0.755),
    (0.085, 0.62),
    (0.09, 0.48),
    (0.11, 0.34),
    (0.15, 0.25),
    (0.21, 0.19),
]
_LEFT_LUNG = [
    (0.71, 0.17),
    (0.65, 0.185),
    (0.595, 0.23),
    (0.57, 0.31),
    (0.565, 0.36),
    (0.58, 0.44),
    (0.62, 0.50),
    (0.665, 0.57),
    (0.705, 0.655),
    (0.75, 0.67),
    (0.80, 0.665),
    (0.86, 0.70),
    (0.905, 0.77),
    (0.905, 0.77),
    (0.905, 0.77),
    (0.915, 0.63),
    (0.91, 0.48),
    (0.89, 0.34),
    (0.85, 0.25),
    (0.79, 0.19),
]


def _chaikin(p: np.ndarray, iterations: int) -> np.ndarray:
    """Corner-cutting smoothing of a closed polygon (P, 2)."""
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def make_lungs(rng: np.random.Generator, w: float, lung_h: float, top: float) -> list[Lung]:
    """The image-left (patient right) and image-right (patient left, heart side) lungs."""
    lungs = []
    for outline, center, out in ((_RIGHT_LUNG, (0.26, 0.44), -1.0), (_LEFT_LUNG, (0.755, 0.44), 1.0)):
        p = np.array(outline) + rng.normal(0, 0.005, (len(outline), 2))
        p = _chaikin(p, 3)
        p = np.column_stack([0.5 + (p[:, 0] - 0.5) * w / 0.44, top + (p[:, 1] - 0.17) * lung_h])
        cx, cy = 0.5 + (center[0] - 0.5) * w / 0.44, top + (center[1] - 0.17) * lung_h
        ax, ay = 0.17 * w / 0.44, 0.3 * lung_h
        t = np.linspace(0, 1, 8, endpoint=False)[:, None, None]
        dense = ((1 - t) * p[None] + t * np.roll(p, -1, axis=0)[None]).transpose(1, 0, 2).reshape(-1, 2)
        lungs.append(Lung(cx, cy, ax, ay, out, dense))
    return lungs


@dataclass
class Lesion:
    """A pneumothorax: the part of ``lung`` beyond ``1 - depth * shape(theta)`` of the way from the
    hilum to the wall, along rays from the hilum (``frame``). Small depths give a crescent hugging
    the wall; depths near 1 collapse the lung towards the hilum."""

    lung: Lung
    frame: Lung  # the same lung seen from its hilum
    center: float  # ray angle of the thickest part (0 lateral, -pi/2 up)
    h_neg: float  # angular half-width towards smaller theta (apex side)
    h_pos: float
    power: float
    wobble_f: float
    wobble_p: float
    depth: float = 0.0  # max relative depth (0.._MAX_DEPTH), fitted to the target area

    def shape(self, theta: np.ndarray) -> np.ndarray:
        """Relative depth profile along the wall, 0 outside the angular span; like theta."""
        dth = (theta - self.center + math.pi) % TWO_PI - math.pi
        z = dth / np.where(dth < 0, self.h_neg, self.h_pos)
        prof = np.clip(1.0 - z * z, 0.0, 1.0) ** self.power
        return prof * (1.0 + 0.03 * np.sin(self.wobble_f * theta + self.wobble_p))

    def depth_key(self, rho: np.ndarray, theta: np.ndarray, r: np.ndarray, in_lung: np.ndarray) -> np.ndarray:
        """Per pixel, the smallest ``depth`` that puts it inside the lesion (inf if never).

        ``rho, theta, r`` are ``frame.polar`` of the pixels; all arrays of one shape.
        """
        s = self.shape(theta)
        valid = (s > 0) & (rho < r) & in_lung
        q = np.full(rho.shape, np.inf, dtype=np.float32)
        q[valid] = (1.0 - rho[valid] / r[valid]) / s[valid]
        return q

    def fields(self, bx: np.ndarray, by: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
        """(px distance past the visceral line, + = in the air; shape), arrays like bx."""
        rho, theta, r = self.frame.polar(bx, by)
        s = self.shape(theta)
        return (rho - r * (1.0 - self.depth * s)) * self.frame.radial_px(theta, px), s


def pixel_block(pose: Pose, lung: Lung, size: int) -> tuple[slice, slice]:
    """Row and column slices of a ``size`` px image that cover ``lung`` (with a small margin)."""
    x, y = pose.to_image(lung.outline[:, 0], lung.outline[:, 1])
    c0, c1 = np.clip([x.min() * size - 3, x.max() * size + 4], 0, size).astype(int)
    r0, r1 = np.clip([y.min() * size - 3, y.max() * size + 4], 0, size).astype(int)
    return slice(r0, r1), slice(c0, c1)


def body_coords(pose: Pose, size: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Body coords of pixel centres, float32 arrays of shape (rows, cols)."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    bx, by = pose.to_body(g[None, cols], g[rows, None])
    return bx.astype(np.float32), by.astype(np.float32)


def place_lesions(
    spec: CaseSpec, lungs: list[Lung], rng: np.random.Generator, pose: Pose, size: int
) -> tuple[list[Lesion], list[np.ndarray]]:
    """Shape one crescent per target area and fit its depth so the mask at ``size`` px has that area.

    Returns the lesions and their bool masks of shape (size, size).
    """
    lesions: list[Lesion] = []
    masks: list[np.ndarray] = []
    side = int(rng.random() < 0.5)
    for k, area_1024 in enumerate(spec.lesion_areas_1024):
        other_lung = k > 0 and rng.random() < 0.25
        lung = lungs[1 - side if other_lung else side]
        h = float(np.clip(0.3 + 0.22 * math.log(area_1024 / 1500.0), 0.2, 1.7))
        if k > 0 and not other_lung:
            prev = lesions[-1]
            # beside the previous one on the same wall, towards the lateral side if it is apical
            gap = prev.h_pos + 0.9 * h + 0.1 if prev.center < -0.6 else -(prev.h_neg + 0.9 * h + 0.1)
            center = prev.center + gap
        else:
            center = rng.uniform(-1.45, 0.1)
        skew = rng.uniform(-0.3, 0.3)
        hilum = lung.about(lung.cx - lung.out * 0.5 * lung.ax, lung.cy + 0.08 * lung.ay)
        les = Lesion(
            lung,
            hilum,
            center,
            h * (1 + skew),
            h * (1 - skew),
            rng.uniform(0.5, 0.9),
            float(round(rng.uniform(4, 9))),
            rng.uniform(0, TWO_PI),
        )
        rows, cols = pixel_block(pose, lung, size)
        bx, by = body_coords(pose, size, rows, cols)
        rho, _, r = lung.polar(bx, by)
        in_lung = rho < r
        frame_polar = hilum.polar(bx, by)
        n_px = max(1, round(area_1024 * (size / 1024.0) ** 2))
        for _ in range(10):  # widen the span until the target fits at depth <= MAX_DEPTH
            q = les.depth_key(*frame_polar, in_lung)
            reachable = np.sort(q[q <= MAX_DEPTH])
            if reachable.size >= n_px:
                break
            les.h_neg, les.h_pos = min(les.h_neg * 1.25, 3.0), min(les.h_pos * 1.25, 3.0)
        n_px = min(n_px, reachable.size)
        les.depth = float(reachable[n_px - 1]) if n_px else 0.0
        mask = np.zeros((size, size), dtype=bool)
        mask[rows, cols] = q <= les.depth if n_px else False
        lesions.append(les)
        masks.append(mask)
    return lesions, masks

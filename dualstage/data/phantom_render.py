"""Phantom rendering: anatomy, vessels, ribs, devices and pneumothorax crescents from a CaseSpec.

See :mod:`dualstage.data.phantom` for what the images are meant to show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dualstage.data.phantom_cases import (
    _MAX_DEPTH,
    _TWO_PI,
    RENDER_MAX,
    CaseSpec,
    _image_streams,
    _patient_rng,
)

__all__ = ["render_case"]


# ----------------------------------------------------------------------------- geometry
@dataclass
class _Pose:
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


_TABLE_N = 360
_TABLE_THETA = np.linspace(-math.pi, math.pi, _TABLE_N, endpoint=False)


@dataclass
class _Lung:
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
            bins = ((th + math.pi) / _TWO_PI * _TABLE_N).astype(int) % _TABLE_N
            table = np.full(_TABLE_N, np.inf)
            np.minimum.at(table, bins, rr)
            ok = np.isfinite(table)
            table = np.interp(_TABLE_THETA, _TABLE_THETA[ok], table[ok], period=_TWO_PI)
            self.table = table.astype(np.float32)

    def about(self, cx: float, cy: float) -> _Lung:
        """The same lung seen from another centre (e.g. the hilum)."""
        return _Lung(cx, cy, self.ax, self.ay, self.out, self.outline)

    def polar(self, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local (rho, theta, boundary radius r(theta)) for body coords; arrays like bx."""
        lx = (bx - self.cx) * (self.out / self.ax)
        ly = (by - self.cy) * (1.0 / self.ay)
        theta = np.arctan2(ly, lx)
        r = np.interp(theta, _TABLE_THETA, self.table, period=_TWO_PI).astype(np.float32)
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


def _make_lungs(rng: np.random.Generator, w: float, lung_h: float, top: float) -> list[_Lung]:
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
        lungs.append(_Lung(cx, cy, ax, ay, out, dense))
    return lungs


@dataclass
class _Lesion:
    """A pneumothorax: the part of ``lung`` beyond ``1 - depth * shape(theta)`` of the way from the
    hilum to the wall, along rays from the hilum (``frame``). Small depths give a crescent hugging
    the wall; depths near 1 collapse the lung towards the hilum."""

    lung: _Lung
    frame: _Lung  # the same lung seen from its hilum
    center: float  # ray angle of the thickest part (0 lateral, -pi/2 up)
    h_neg: float  # angular half-width towards smaller theta (apex side)
    h_pos: float
    power: float
    wobble_f: float
    wobble_p: float
    depth: float = 0.0  # max relative depth (0.._MAX_DEPTH), fitted to the target area

    def shape(self, theta: np.ndarray) -> np.ndarray:
        """Relative depth profile along the wall, 0 outside the angular span; like theta."""
        dth = (theta - self.center + math.pi) % _TWO_PI - math.pi
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


def _pixel_block(pose: _Pose, lung: _Lung, size: int) -> tuple[slice, slice]:
    """Row and column slices of a ``size`` px image that cover ``lung`` (with a small margin)."""
    x, y = pose.to_image(lung.outline[:, 0], lung.outline[:, 1])
    c0, c1 = np.clip([x.min() * size - 3, x.max() * size + 4], 0, size).astype(int)
    r0, r1 = np.clip([y.min() * size - 3, y.max() * size + 4], 0, size).astype(int)
    return slice(r0, r1), slice(c0, c1)


def _body_coords(pose: _Pose, size: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Body coords of pixel centres, float32 arrays of shape (rows, cols)."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    bx, by = pose.to_body(g[None, cols], g[rows, None])
    return bx.astype(np.float32), by.astype(np.float32)


def _place_lesions(
    spec: CaseSpec, lungs: list[_Lung], rng: np.random.Generator, pose: _Pose, size: int
) -> tuple[list[_Lesion], list[np.ndarray]]:
    """Shape one crescent per target area and fit its depth so the mask at ``size`` px has that area.

    Returns the lesions and their bool masks of shape (size, size).
    """
    lesions: list[_Lesion] = []
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
        les = _Lesion(
            lung,
            hilum,
            center,
            h * (1 + skew),
            h * (1 - skew),
            rng.uniform(0.5, 0.9),
            float(round(rng.uniform(4, 9))),
            rng.uniform(0, _TWO_PI),
        )
        rows, cols = _pixel_block(pose, lung, size)
        bx, by = _body_coords(pose, size, rows, cols)
        rho, _, r = lung.polar(bx, by)
        in_lung = rho < r
        frame_polar = hilum.polar(bx, by)
        n_px = max(1, round(area_1024 * (size / 1024.0) ** 2))
        for _ in range(10):  # widen the span until the target fits at depth <= MAX_DEPTH
            q = les.depth_key(*frame_polar, in_lung)
            reachable = np.sort(q[q <= _MAX_DEPTH])
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


# ----------------------------------------------------------------------------- rendering
def _smooth_noise(rng: np.random.Generator, res: int, cells: int) -> np.ndarray:
    """Band-limited noise, shape (res, res), unit-ish std."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), "F")
    return np.asarray(small.resize((res, res), Image.BICUBIC))


def _sig(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _bezier(p: np.ndarray, n: int = 40) -> np.ndarray:
    """Points (n, 2) on the Bezier curve with control points p (k, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    k = len(p) - 1
    coef = [math.comb(k, i) * t**i * (1 - t) ** (k - i) for i in range(k + 1)]
    return sum(c * q for c, q in zip(coef, p, strict=True))


class _Canvas:
    """A PIL 'L' layer at ``res`` px drawn in body coordinates through the pose."""

    def __init__(self, res: int, pose: _Pose, supersample: int) -> None:
        self.res, self.pose, self.ss = res, pose, supersample
        self.im = Image.new("L", (res * supersample, res * supersample), 0)
        self.draw = ImageDraw.Draw(self.im)
        self.px = res * supersample * pose.scale  # px per body unit

    def _xy(self, pts: np.ndarray) -> list[tuple[float, float]]:
        x, y = self.pose.to_image(pts[:, 0], pts[:, 1])
        f = self.res * self.ss
        return list(zip((x * f).tolist(), (y * f).tolist(), strict=True))

    def line(self, pts: np.ndarray, width: float, value: int) -> None:
        self.draw.line(self._xy(pts), fill=value, width=max(1, round(width * self.px)), joint="curve")

    def ring(self, center: tuple[float, float], radius: float, width: float, value: int) -> None:
        (x, y), r = self._xy(np.array([center]))[0], radius * self.px
        self.draw.ellipse([x - r, y - r, x + r, y + r], outline=value, width=max(1, round(width * self.px)))

    def array(self, blur: float) -> np.ndarray:
        """Float32 (res, res) in [0, 1]."""
        im = self.im.filter(ImageFilter.GaussianBlur(blur * self.ss)) if blur > 0 else self.im
        if self.ss > 1:
            im = im.reduce(self.ss)
        return np.asarray(im, dtype=np.float32) * (1.0 / 255.0)


def _grow_vessels(canvas: _Canvas, lung: _Lung, rng: np.random.Generator, gens: int) -> None:
    """Draw a branching vessel tree from the hilum of ``lung``; thinner and fainter outwards."""
    hx, hy = -0.7 * lung.ax, 0.05 * lung.ay  # lateral-positive frame relative to the centre
    trunks = np.linspace(-1.5, 1.25, 10) + rng.normal(0, 0.08, 10)
    u = iter(rng.random(20_000).tolist())  # pre-drawn uniforms: far faster than per-call draws
    stack = [
        (
            hx - 0.1 * lung.ax * math.cos(a),
            hy + 0.22 * lung.ay * math.sin(a),
            a,
            0.05 * (0.8 + 0.4 * next(u)),
            0.009,
            0,
        )
        for a in trunks.tolist()
    ]
    # pose as plain floats: body (x, y) -> canvas px
    pose, f = canvas.pose, canvas.res * canvas.ss
    c, sn, sc = math.cos(pose.rot), math.sin(pose.rot), pose.scale * f
    ox, oy = (0.5 + pose.tx) * f, (0.5 + pose.ty) * f
    cx, cy, out, ax, ay, table = lung.cx, lung.cy, lung.out, lung.ax, lung.ay, lung.table.tolist()
    k_tab = _TABLE_N / _TWO_PI
    draw = canvas.draw
    while stack:
        x, y, ang, length, width, g = stack.pop()
        pts = []
        for step in range(3):
            if step:
                ang += 0.35 * (next(u) - 0.5)
                nx, ny = x + 0.5 * length * math.cos(ang), y + 0.5 * length * math.sin(ang)
                lx, ly = nx / ax, ny / ay
                if math.hypot(lx, ly) > 0.97 * table[int((math.atan2(ly, lx) + math.pi) * k_tab) % _TABLE_N]:
                    break
                x, y = nx, ny
            bx, by = cx + out * x - 0.5, cy + y - 0.5
            pts.append((ox + sc * (c * bx - sn * by), oy + sc * (sn * bx + c * by)))
        if len(pts) < 2:
            continue
        fade = math.exp(-math.hypot(x - hx, y - hy) / 0.35) * 0.9**g
        draw.line(pts, fill=int(50 + 205 * fade), width=max(1, round(width * sc)))
        if g + 1 < gens and len(pts) == 3:
            if next(u) < 0.75:
                spread = 0.2 + 0.25 * next(u)
                for turn in (-spread, spread):
                    stack.append((x, y, ang + turn, length * (0.72 + 0.18 * next(u)), width * 0.78, g + 1))
            else:
                stack.append((x, y, ang, length * (0.72 + 0.18 * next(u)), width * 0.78, g + 1))


def _anatomy(prng: np.random.Generator, rng: np.random.Generator) -> dict:
    """Patient habitus (from the patient stream), jittered per image."""
    return {
        "w": prng.uniform(0.40, 0.46) * rng.uniform(0.98, 1.02),  # chest half-width
        "lung_h": prng.uniform(0.9, 1.08) * rng.uniform(0.96, 1.04),  # inspiration depth
        "top": prng.uniform(0.15, 0.19),  # lung apex height
        "heart": prng.uniform(0.9, 1.15),
        "neck": prng.uniform(0.07, 0.095),
        "fat": prng.uniform(0.0, 1.0),
    }


def render_case(spec: CaseSpec, size: int = 1024) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one phantom: image uint8 (size, size) and one bool mask (size, size) per lesion."""
    _, render_ss, lesion_ss, device_ss = _image_streams(spec.seed, spec.index)
    rng = np.random.default_rng(render_ss)
    A = _anatomy(_patient_rng(spec.seed, spec.patient_index), rng)
    res = min(max(size, 256), RENDER_MAX)
    pose = _Pose(rng.normal(0, 0.03), rng.uniform(0.93, 1.05), rng.normal(0, 0.015), rng.normal(0.01, 0.015))
    px = res * pose.scale  # px per body unit at render resolution
    bx, by = _body_coords(pose, res, slice(None), slice(None))
    dx = bx - 0.5
    adx = np.abs(dx)
    w, top = A["w"], A["top"]

    # body outline with rounded shoulders; soft-tissue thickness (bright = dense)
    t = np.clip((by - 0.0) / (top + 0.06), 0, 1)
    hw = A["neck"] + (w + 0.02 - A["neck"]) * np.sqrt(t * t * (3 - 2 * t)) - 0.02 * np.clip(by - 0.7, 0, None)
    body = _sig((hw - adx) * px / 2.0)
    thick = np.sqrt(np.clip(1 - (dx / np.maximum(hw, 0.05)) ** 2, 0, 1))
    D = body * (0.30 + (0.30 + 0.1 * A["fat"]) * thick)
    if rng.random() < 0.45:  # arms at the sides
        arm_x = w + rng.uniform(0.05, 0.08)
        D += 0.5 * _sig((0.035 - np.abs(adx - arm_x)) * px / 2.0) * _sig((by - top + 0.02) * px / 3.0)

    # lungs (air lowers density, most in the middle of each lung)
    lungs = _make_lungs(rng, w, A["lung_h"], top)
    blocks = [_pixel_block(pose, lung, res) for lung in lungs]
    polar = [lung.polar(bx[blk], by[blk]) for lung, blk in zip(lungs, blocks, strict=True)]
    air = np.zeros_like(D)
    for lung, blk, (rho, theta, r) in zip(lungs, blocks, polar, strict=True):
        m = _sig((r - rho) * lung.radial_px(theta, px) / 1.0)
        air[blk] += m * (0.55 + 0.45 * np.sqrt(np.clip(1 - rho / r, 0, 1)))
    dome = lungs[0].cy + 0.75 * lungs[0].ay  # abdomen below the domes
    D += 0.12 * body * _sig((by - dome) / 0.05) * thick

    # parenchyma: haze, hilar density, branching vessels
    ss = 2 if res < 384 else 1
    vessels = _Canvas(res, pose, ss)
    for lung in lungs:
        _grow_vessels(vessels, lung, rng, gens=8)
    haze = 0.08 + 0.02 * _smooth_noise(rng, res, 10) + 0.012 * _smooth_noise(rng, res, max(8, res // 6))
    hilum = sum(
        np.exp(-(((bx - lung.cx + lung.out * 0.7 * lung.ax) / 0.05) ** 2 + ((by - lung.cy) / 0.08) ** 2))
        for lung in lungs
    )
    paren = haze + 0.08 * hilum + rng.uniform(0.13, 0.17) * vessels.array(blur=1.0)

    # pneumothorax: no parenchyma inside the crescent, bright visceral pleural line at its inner edge
    lesions, masks = _place_lesions(spec, lungs, np.random.default_rng(lesion_ss), pose, size)
    pleura = np.zeros_like(D)
    line_w = 1.1 * res / 512  # px at render resolution (about 2 px at 1024)
    for les in lesions:
        i = lungs.index(les.lung)
        blk, (rho, theta, r) = blocks[i], polar[i]
        in_this_lung = _sig((r - rho) * les.lung.radial_px(theta, px) / 0.7)
        dist, s = les.fields(bx[blk], by[blk], px)
        air_soft = _sig(dist / 0.6) * in_this_lung
        paren[blk] = paren[blk] - spec.lesion_contrast * (paren[blk] + 0.045) * air_soft
        # the visceral pleura is lung tissue: centre the line just on the lung side of the mask edge
        pleura[blk] += np.exp(-(((dist + 0.8 * line_w) / line_w) ** 2)) * np.sqrt(s) * in_this_lung
    D += air * (paren - 0.42) + rng.uniform(0.09, 0.14) * pleura

    # spine, heart
    D += 0.07 * _sig((0.03 - adx) * px / 2) * (0.9 + 0.1 * np.cos(by * _TWO_PI / 0.045) ** 2) * body
    hr = ((bx - 0.55) / (0.12 * A["heart"])) ** 2 + ((by - lungs[1].cy - 0.17) / (0.1 * A["heart"])) ** 2
    D += 0.06 * _sig((1 - hr) * 5)

    trachea = _sig((0.016 - adx) * px / 2) * _sig((lungs[0].cy - 0.1 - by) * px / 6)
    D -= 0.07 * trachea

    # ribs and clavicles: one phase field per family, u = |x - midline| / half-width
    u = adx / w
    cage = _sig((1.03 - u) * w * px / 2) * _sig((u - 0.07) * w * px / 2) * body
    rib_amp = rng.uniform(0.05, 0.08)
    rib_edge = 0.15 if rng.random() < 0.7 else rng.uniform(0.6, 1.0)  # some with prominent rib edges
    shade = 1.0 - 0.6 * _sig((0.2 - u) * w * px / 3)  # ribs fade behind the mediastinum
    arch = 0.2 * (u - 0.3) ** 2 + 0.5 * np.clip(u - 0.7, 0, None) ** 2
    post = (by - top + 0.02 - arch) / (0.056 * A["lung_h"])
    D += rib_amp * _rib_profile(post, 0.45, rib_edge, 10) * cage * shade
    ant = (by - top - 0.01 - 0.2 * (1.0 - u)) / (0.062 * A["lung_h"])
    D += 0.5 * rib_amp * _rib_profile(ant, 0.4, 0.2, 7) * cage * _sig((u - 0.35) * w * px / 6)
    clav = (by - top - 0.06 + 0.1 * u - 0.02 * u * u) / 0.026
    clav_span = _sig((u - 0.05) * w * px / 2) * _sig((0.75 - u) * w * px / 3)
    D += 0.14 * _rib_profile(clav + 0.5, 0.9, 0.5, 1) * clav_span

    # female breast shadows, gastric bubble
    if spec.sex == "F":
        for sgn in (-1.0, 1.0):
            ecy = dome - 0.02
            e = ((bx - 0.5 - sgn * 0.3 * w / 0.44) / 0.15) ** 2 + ((by - ecy) / 0.11) ** 2
            D += 0.04 * _sig((1 - e) * np.where(by > ecy, 30.0, 3.0))
    if rng.random() < 0.6:
        e = ((bx - 0.5 - 0.2 * w / 0.44) / 0.05) ** 2 + ((by - dome - 0.06) / 0.03) ** 2
        D -= 0.1 * _sig((1 - e) * 4)

    # confounders and devices
    drng = np.random.default_rng(device_ss)
    dev = _Canvas(res, pose, ss)
    _draw_devices(dev, spec, lungs, drng, w)
    if drng.random() < (0.08 if spec.positive else 0.25):
        D += _skin_fold(drng, lungs[int(drng.random() < 0.5)], bx, by, px)
    D += 0.5 * dev.array(blur=0.5)

    # exposure, contrast, noise
    lo, hi = rng.uniform(0.0, 0.08), rng.uniform(0.85, 1.0)
    img = np.clip((D - lo) / (hi - lo), 0, 1) ** rng.uniform(0.8, 1.25)
    img = img * (1 + rng.uniform(-0.06, 0.06) * (bx - 0.5) + rng.uniform(-0.06, 0.06) * (by - 0.5))
    img = 255.0 * img + rng.uniform(0.5, 2.0) * _smooth_noise(rng, res, res // 2)
    if res != size:
        kind = Image.BICUBIC if size > res else Image.BOX
        img = np.asarray(Image.fromarray(img.astype(np.float32), "F").resize((size, size), kind))
    img = img + rng.standard_normal((size, size), dtype=np.float32) * rng.uniform(1.0, 3.0)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return img, masks


def _rib_profile(phase: np.ndarray, width: float, edge: float, count: int) -> np.ndarray:
    """Bands of relative ``width`` at integer phases 0..count-1: tube profile + cortical edges.

    Evaluated through a lookup table (256 steps per band) on ``phase``; same shape as phase.
    """
    steps = 256
    p = np.arange(-steps, (count + 1) * steps, dtype=np.float32) / steps
    f = p - np.floor(p)
    d = np.clip((f - width / 2) / (width / 2), -1.5, 1.5)
    core = np.sqrt(np.clip(1 - d * d, 0, 1))
    rim = np.exp(-(((np.abs(d) - 0.9) / 0.12) ** 2))
    lut = (0.85 * core + edge * rim) * _sig((p + 0.2) * 20) * _sig((count - p) * 6)
    lut[[0, -1]] = 0.0
    idx = np.clip((phase + 1.0) * steps, 0, lut.size - 1).astype(np.int32)
    return lut[idx]


def _skin_fold(
    rng: np.random.Generator, lung: _Lung, bx: np.ndarray, by: np.ndarray, px: float
) -> np.ndarray:
    """A skin fold over the lateral lung: density ramps up towards a curved edge, then drops
    sharply; a PTX look-alike without the avascular region. Density increment like bx."""
    y0, y1 = lung.cy - lung.ay * rng.uniform(0.3, 0.9), lung.cy + lung.ay * rng.uniform(0.3, 1.0)
    x0 = lung.cx + lung.out * lung.ax * rng.uniform(0.35, 0.75)
    bend = rng.uniform(-0.06, 0.06)
    t = (by - 0.5 * (y0 + y1)) / (0.5 * (y1 - y0))
    xc = x0 + lung.out * bend * (t * t - 1)
    s = (bx - xc) * lung.out * px  # px, positive = lateral of the fold edge
    along = _sig((1 - np.abs(t)) * 10)
    ramp = np.exp(np.minimum(s, 0.0) / (rng.uniform(0.03, 0.06) * px)) * _sig(-s * 1.5)
    return (rng.uniform(0.08, 0.12) * ramp + 0.04 * np.exp(-((s / 1.0) ** 2))) * along


def _draw_devices(
    canvas: _Canvas, spec: CaseSpec, lungs: list[_Lung], rng: np.random.Generator, w: float
) -> None:
    """Tubes, lines, ECG leads and a side marker, in body coordinates."""
    ap = spec.view == "AP"
    if rng.random() < 0.2:  # chest tube from the lower lateral wall towards the apex
        lung = lungs[int(rng.random() < 0.5)]
        p = np.array(
            [
                [0.5 + lung.out * (w + 0.08), lung.cy + lung.ay * rng.uniform(0.4, 0.8)],
                [lung.cx + lung.out * lung.ax * 0.9, lung.cy + lung.ay * 0.3],
                [
                    lung.cx + lung.out * lung.ax * rng.uniform(0.2, 0.7),
                    lung.cy - lung.ay * rng.uniform(0.5, 0.85),
                ],
            ]
        )
        pts = _bezier(p)
        canvas.line(pts, 0.011, 90)
        canvas.line(pts + [0.0035, 0.0], 0.0025, 230)
    if rng.random() < (0.45 if ap else 0.15):  # central venous line
        side = 1.0 if rng.random() < 0.5 else -1.0
        p = np.array(
            [
                [0.5 + side * 0.25, 0.02],
                [0.5 + side * 0.12, 0.14],
                [0.5 + side * 0.03, 0.2],
                [0.5 + side * 0.02, 0.36 + rng.uniform(-0.04, 0.04)],
            ]
        )
        canvas.line(_bezier(p), 0.003, 220)
    if rng.random() < (0.4 if ap else 0.15):  # nasogastric / endotracheal tube
        p = np.array([[0.5, -0.02], [0.5 + rng.normal(0, 0.01), 0.4], [0.54, 0.8]])
        canvas.line(_bezier(p), 0.005, 90)
    for _ in range(int(rng.integers(0, 5)) if ap or rng.random() < 0.3 else 0):  # ECG leads
        c = (0.5 + rng.uniform(-w, w), rng.uniform(0.12, 0.75))
        canvas.ring(c, 0.012, 0.004, 230)
        end = np.array([c[0] + rng.uniform(-0.6, 0.6), rng.choice([-0.05, 1.05])])
        mid = 0.5 * (np.array(c) + end) + rng.normal(0, 0.12, 2)
        canvas.line(_bezier(np.array([c, mid, end])), 0.0022, 200)
    if rng.random() < 0.6:  # side marker "L" near a top corner
        x0, y0 = (0.86 if rng.random() < 0.5 else 0.08), rng.uniform(0.04, 0.08)
        canvas.line(np.array([[x0, y0], [x0, y0 + 0.03], [x0 + 0.018, y0 + 0.03]]), 0.004, 255)

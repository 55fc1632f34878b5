"""Phantom rendering: densities of body, lungs, vessels, ribs, devices and pneumothorax crescents.

The geometry (pose, lung outlines, lesion shapes and masks) is in
:mod:`dualstage.data.phantom_anatomy`; see :mod:`dualstage.data.phantom` for what the images
are meant to show. Every step draws from its generator in a fixed order: output is
byte-identical for a given spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dualstage.data.phantom_anatomy import (
    TABLE_N,
    Lung,
    Pose,
    body_coords,
    make_lungs,
    pixel_block,
    place_lesions,
)
from dualstage.data.phantom_cases import RENDER_MAX, TWO_PI, CaseSpec, image_streams, patient_rng

__all__ = ["render_case"]


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

    def __init__(self, res: int, pose: Pose, supersample: int) -> None:
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


def _grow_vessels(canvas: _Canvas, lung: Lung, rng: np.random.Generator, gens: int) -> None:
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
    k_tab = TABLE_N / TWO_PI
    draw = canvas.draw
    while stack:
        x, y, ang, length, width, g = stack.pop()
        pts = []
        for step in range(3):
            if step:
                ang += 0.35 * (next(u) - 0.5)
                nx, ny = x + 0.5 * length * math.cos(ang), y + 0.5 * length * math.sin(ang)
                lx, ly = nx / ax, ny / ay
                if math.hypot(lx, ly) > 0.97 * table[int((math.atan2(ly, lx) + math.pi) * k_tab) % TABLE_N]:
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


@dataclass
class _Grid:
    """The render grid: pixel centres in body coords (res, res) float32 and px per body unit."""

    pose: Pose
    res: int
    px: float
    bx: np.ndarray
    by: np.ndarray
    dx: np.ndarray  # bx - 0.5
    adx: np.ndarray  # |bx - 0.5|


def _torso(A: dict, g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(density D, body mask, soft-tissue thickness), each (res, res): outline with rounded
    shoulders, thickness (bright = dense) and sometimes the arms at the sides."""
    w, top = A["w"], A["top"]
    t = np.clip((g.by - 0.0) / (top + 0.06), 0, 1)
    hw = (
        A["neck"]
        + (w + 0.02 - A["neck"]) * np.sqrt(t * t * (3 - 2 * t))
        - 0.02 * np.clip(g.by - 0.7, 0, None)
    )
    body = _sig((hw - g.adx) * g.px / 2.0)
    thick = np.sqrt(np.clip(1 - (g.dx / np.maximum(hw, 0.05)) ** 2, 0, 1))
    D = body * (0.30 + (0.30 + 0.1 * A["fat"]) * thick)
    if rng.random() < 0.45:  # arms at the sides
        arm_x = w + rng.uniform(0.05, 0.08)
        D += 0.5 * _sig((0.035 - np.abs(g.adx - arm_x)) * g.px / 2.0) * _sig((g.by - top + 0.02) * g.px / 3.0)
    return D, body, thick


def _lung_air(lungs: list[Lung], g: _Grid, like: np.ndarray) -> tuple[list, list, np.ndarray]:
    """(pixel block per lung, its polar coords, air (res, res)): air lowers density, most in the
    middle of each lung."""
    blocks = [pixel_block(g.pose, lung, g.res) for lung in lungs]
    polar = [lung.polar(g.bx[blk], g.by[blk]) for lung, blk in zip(lungs, blocks, strict=True)]
    air = np.zeros_like(like)
    for lung, blk, (rho, theta, r) in zip(lungs, blocks, polar, strict=True):
        m = _sig((r - rho) * lung.radial_px(theta, g.px) / 1.0)
        air[blk] += m * (0.55 + 0.45 * np.sqrt(np.clip(1 - rho / r, 0, 1)))
    return blocks, polar, air


def _parenchyma(lungs: list[Lung], g: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Lung tissue density (res, res): haze, hilar density, branching vessels."""
    vessels = _Canvas(g.res, g.pose, _supersample(g.res))
    for lung in lungs:
        _grow_vessels(vessels, lung, rng, gens=8)
    haze = 0.08 + 0.02 * _smooth_noise(rng, g.res, 10) + 0.012 * _smooth_noise(rng, g.res, max(8, g.res // 6))
    hilum = sum(
        np.exp(-(((g.bx - lung.cx + lung.out * 0.7 * lung.ax) / 0.05) ** 2 + ((g.by - lung.cy) / 0.08) ** 2))
        for lung in lungs
    )
    return haze + 0.08 * hilum + rng.uniform(0.13, 0.17) * vessels.array(blur=1.0)


def _pneumothorax(
    spec: CaseSpec, lungs: list[Lung], lung_px: tuple, paren: np.ndarray, g: _Grid, lesion_rng, size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clear ``paren`` (in place) inside each crescent; (pleural line density (res, res), masks).

    ``lung_px``: (blocks, polar) of :func:`_lung_air`; masks are bool (size, size), one per lesion.
    """
    blocks, polar = lung_px
    lesions, masks = place_lesions(spec, lungs, lesion_rng, g.pose, size)
    pleura = np.zeros_like(paren)
    line_w = 1.1 * g.res / 512  # px at render resolution (about 2 px at 1024)
    for les in lesions:
        i = lungs.index(les.lung)
        blk, (rho, theta, r) = blocks[i], polar[i]
        in_this_lung = _sig((r - rho) * les.lung.radial_px(theta, g.px) / 0.7)
        dist, s = les.fields(g.bx[blk], g.by[blk], g.px)
        air_soft = _sig(dist / 0.6) * in_this_lung
        paren[blk] = paren[blk] - spec.lesion_contrast * (paren[blk] + 0.045) * air_soft
        # the visceral pleura is lung tissue: centre the line just on the lung side of the mask edge
        pleura[blk] += np.exp(-(((dist + 0.8 * line_w) / line_w) ** 2)) * np.sqrt(s) * in_this_lung
    return pleura, masks


def _mediastinum(D: np.ndarray, g: _Grid, lungs: list[Lung], A: dict, body: np.ndarray) -> None:
    """Add spine, heart and trachea to D (in place)."""
    D += 0.07 * _sig((0.03 - g.adx) * g.px / 2) * (0.9 + 0.1 * np.cos(g.by * TWO_PI / 0.045) ** 2) * body
    hr = ((g.bx - 0.55) / (0.12 * A["heart"])) ** 2 + ((g.by - lungs[1].cy - 0.17) / (0.1 * A["heart"])) ** 2
    D += 0.06 * _sig((1 - hr) * 5)
    trachea = _sig((0.016 - g.adx) * g.px / 2) * _sig((lungs[0].cy - 0.1 - g.by) * g.px / 6)
    D -= 0.07 * trachea


def _ribs(D: np.ndarray, g: _Grid, A: dict, body: np.ndarray, rng: np.random.Generator) -> None:
    """Add ribs and clavicles to D (in place): one phase field per family, u = |x - midline| / half-width."""
    w, top, px = A["w"], A["top"], g.px
    u = g.adx / w
    cage = _sig((1.03 - u) * w * px / 2) * _sig((u - 0.07) * w * px / 2) * body
    rib_amp = rng.uniform(0.05, 0.08)
    rib_edge = 0.15 if rng.random() < 0.7 else rng.uniform(0.6, 1.0)  # some with prominent rib edges
    shade = 1.0 - 0.6 * _sig((0.2 - u) * w * px / 3)  # ribs fade behind the mediastinum
    arch = 0.2 * (u - 0.3) ** 2 + 0.5 * np.clip(u - 0.7, 0, None) ** 2
    post = (g.by - top + 0.02 - arch) / (0.056 * A["lung_h"])
    D += rib_amp * _rib_profile(post, 0.45, rib_edge, 10) * cage * shade
    ant = (g.by - top - 0.01 - 0.2 * (1.0 - u)) / (0.062 * A["lung_h"])
    D += 0.5 * rib_amp * _rib_profile(ant, 0.4, 0.2, 7) * cage * _sig((u - 0.35) * w * px / 6)
    clav = (g.by - top - 0.06 + 0.1 * u - 0.02 * u * u) / 0.026
    clav_span = _sig((u - 0.05) * w * px / 2) * _sig((0.75 - u) * w * px / 3)
    D += 0.14 * _rib_profile(clav + 0.5, 0.9, 0.5, 1) * clav_span


def _soft_tissue(D: np.ndarray, spec: CaseSpec, g: _Grid, w: float, dome: float, rng) -> None:
    """Add female breast shadows and (often) a gastric bubble to D (in place)."""
    if spec.sex == "F":
        for sgn in (-1.0, 1.0):
            ecy = dome - 0.02
            e = ((g.bx - 0.5 - sgn * 0.3 * w / 0.44) / 0.15) ** 2 + ((g.by - ecy) / 0.11) ** 2
            D += 0.04 * _sig((1 - e) * np.where(g.by > ecy, 30.0, 3.0))
    if rng.random() < 0.6:
        e = ((g.bx - 0.5 - 0.2 * w / 0.44) / 0.05) ** 2 + ((g.by - dome - 0.06) / 0.03) ** 2
        D -= 0.1 * _sig((1 - e) * 4)


def _confounders(D: np.ndarray, spec: CaseSpec, lungs: list[Lung], g: _Grid, w: float, device_rng) -> None:
    """Add devices (tubes, lines, leads, marker) and sometimes a skin fold to D (in place)."""
    dev = _Canvas(g.res, g.pose, _supersample(g.res))
    _draw_devices(dev, spec, lungs, device_rng, w)
    if device_rng.random() < (0.08 if spec.positive else 0.25):
        D += _skin_fold(device_rng, lungs[int(device_rng.random() < 0.5)], g.bx, g.by, g.px)
    D += 0.5 * dev.array(blur=0.5)


def _expose(D: np.ndarray, g: _Grid, rng: np.random.Generator, size: int) -> np.ndarray:
    """Density (res, res) -> uint8 image (size, size): exposure, contrast, resize, noise."""
    lo, hi = rng.uniform(0.0, 0.08), rng.uniform(0.85, 1.0)
    img = np.clip((D - lo) / (hi - lo), 0, 1) ** rng.uniform(0.8, 1.25)
    img = img * (1 + rng.uniform(-0.06, 0.06) * (g.bx - 0.5) + rng.uniform(-0.06, 0.06) * (g.by - 0.5))
    img = 255.0 * img + rng.uniform(0.5, 2.0) * _smooth_noise(rng, g.res, g.res // 2)
    if g.res != size:
        kind = Image.BICUBIC if size > g.res else Image.BOX
        img = np.asarray(Image.fromarray(img.astype(np.float32), "F").resize((size, size), kind))
    img = img + rng.standard_normal((size, size), dtype=np.float32) * rng.uniform(1.0, 3.0)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _supersample(res: int) -> int:
    """Canvas supersampling of thin drawn lines: 2x below 384 px."""
    return 2 if res < 384 else 1


def render_case(spec: CaseSpec, size: int = 1024) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one phantom: image uint8 (size, size) and one bool mask (size, size) per lesion."""
    _, render_ss, lesion_ss, device_ss = image_streams(spec.seed, spec.index)
    rng = np.random.default_rng(render_ss)
    A = _anatomy(patient_rng(spec.seed, spec.patient_index), rng)
    res = min(max(size, 256), RENDER_MAX)
    pose = Pose(rng.normal(0, 0.03), rng.uniform(0.93, 1.05), rng.normal(0, 0.015), rng.normal(0.01, 0.015))
    bx, by = body_coords(pose, res, slice(None), slice(None))
    g = _Grid(pose, res, res * pose.scale, bx, by, bx - 0.5, np.abs(bx - 0.5))
    D, body, thick = _torso(A, g, rng)
    lungs = make_lungs(rng, A["w"], A["lung_h"], A["top"])
    blocks, polar, air = _lung_air(lungs, g, D)
    dome = lungs[0].cy + 0.75 * lungs[0].ay  # abdomen below the domes
    D += 0.12 * body * _sig((by - dome) / 0.05) * thick
    paren = _parenchyma(lungs, g, rng)
    # pneumothorax: no parenchyma inside the crescent, bright visceral pleural line at its inner edge
    lesion_rng = np.random.default_rng(lesion_ss)
    pleura, masks = _pneumothorax(spec, lungs, (blocks, polar), paren, g, lesion_rng, size)
    D += air * (paren - 0.42) + rng.uniform(0.09, 0.14) * pleura
    _mediastinum(D, g, lungs, A, body)
    _ribs(D, g, A, body, rng)
    _soft_tissue(D, spec, g, A["w"], dome, rng)
    _confounders(D, spec, lungs, g, A["w"], np.random.default_rng(device_ss))
    return _expose(D, g, rng, size), masks


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


def _skin_fold(rng: np.random.Generator, lung: Lung, bx: np.ndarray, by: np.ndarray, px: float) -> np.ndarray:
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
    canvas: _Canvas, spec: CaseSpec, lungs: list[Lung], rng: np.random.Generator, w: float
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

"""Synthetic chest-radiograph phantoms with pneumothorax masks, in the SIIM-ACR file layouts.

Each image is a cartoon PA/AP chest film (body outline, lungs with branching vessels, ribs,
clavicles, mediastinum, heart) rendered from analytic fields plus PIL-drawn lines. A
pneumothorax is an avascular, darker crescent hugging the lateral/apical chest wall of one
lung, bounded medially by a thin bright visceral pleural line; its mask is exactly that
crescent. Negatives (and some positives) carry look-alikes: skin folds, tubes and lines,
prominent rib edges.

Statistics follow the real stage-2 table: about 22 % positive; the per-image union area at
1024 px is lognormal (median 8,600 px, sigma 1.14, about 10 % under 2,000 px) clipped to
[55, 161421] and scaled by (size / 1024)^2; about 15 % of positives have two lesions
(two RLE rows). Everything is drawn from ``np.random.SeedSequence([seed, index])`` (plus
one stream per patient), so output does not depend on the number of workers.

Layouts (re-running into the same folder overwrites files with identical bytes):

- ``siim``: ``dicom-images-train/<Study>/<Series>/<SOP>.dcm`` and ``train-rle.csv``
  (``ImageId, EncodedPixels``; values written with a leading space as in the stage-1 file).
- ``png``: ``png_images/<i>_train_<0|1>_.png``, ``png_masks/`` (0/255) and
  ``stage_1_train_images.csv`` (``new_filename, ImageId, has_pneumo``).

Both also get ``phantom_index.csv`` (the table :func:`generate` returns, paths relative).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from dualstage.io import atomic_write_bytes
from dualstage.rle import decode, encode

__all__ = [
    "CaseSpec",
    "dicom_bytes",
    "generate",
    "main",
    "plan_cases",
    "render_case",
    "sample_lesion_area",
    "sample_presence",
    "write_preview",
]

POSITIVE_SHARE = 0.22
TWO_LESION_SHARE = 0.15
AREA_MEDIAN_1024 = 8600.0
AREA_SIGMA = 1.14
AREA_RANGE_1024 = (55.0, 161421.0)
RENDER_MAX = 512  # anatomy is rendered at clip(size, 256, RENDER_MAX) px, then resized to size
UID_PREFIX = "1.2.826.0.1.3680043.8.498.77."  # pydicom's UID root + a dualstage arc
_PATIENT_STREAM = 1
_MAX_DEPTH = 0.8  # deepest collapse towards the hilum (fraction of the hilum-wall distance)
_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------- sampling
def sample_presence(rng: np.random.Generator, n: int | None = None) -> bool | np.ndarray:
    """Draw the presence decision(s): True with probability 0.22; shape () or (n,)."""
    u = rng.random(n)
    return bool(u < POSITIVE_SHARE) if n is None else u < POSITIVE_SHARE


def sample_lesion_area(
    rng: np.random.Generator, size: int = 1024, n: int | None = None
) -> float | np.ndarray:
    """Draw the per-image union lesion area(s) in pixels at ``size`` px; shape () or (n,).

    Lognormal(log 8600, 1.14) at 1024 px, clipped to [55, 161421], times (size / 1024)^2.
    """
    a = np.clip(rng.lognormal(math.log(AREA_MEDIAN_1024), AREA_SIGMA, n), *AREA_RANGE_1024)
    a = a * (size / 1024.0) ** 2
    return float(a) if n is None else a


@dataclass(frozen=True)
class CaseSpec:
    """Everything about one image decided before rendering (no pixels)."""

    seed: int
    index: int
    image_id: str  # SOPInstanceUID = ImageId = file stem
    study_uid: str
    series_uid: str
    patient_index: int
    patient_id: str
    sex: str  # "M" / "F"
    age: int
    view: str  # "PA" / "AP"
    pixel_spacing_1024: float  # mm at 1024 px
    positive: bool
    lesion_areas_1024: tuple[float, ...]  # target area per lesion at 1024 px (empty if negative)
    jpeg: bool
    lesion_contrast: float = 1.0  # 1 = the default look; >1 darker pneumothoraces (easier demos)


def _uid(seed: int, index: int, kind: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(UID_PREFIX, entropy_srcs=["dualstage-phantom", str(seed), str(index), kind]))


def plan_cases(
    n: int, seed: int = 0, jpeg_share: float = 0.3, lesion_contrast: float = 1.0
) -> list[CaseSpec]:
    """Decide ids, patients, presence, lesion areas and compression for images 0..n-1.

    Prefix-stable: the first k specs do not depend on ``n``. About 12 % of patients get 2-3
    images (interleaved with other patients' images).
    """
    master = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PATIENT_STREAM,)))
    open_patients: list[list[int]] = []  # [patient_index, images_left]
    n_patients = 0
    specs: list[CaseSpec] = []
    for index in range(n):
        u_reuse, u_cap, u_pick = master.random(3)
        if open_patients and u_reuse < 0.35:
            slot = open_patients[int(u_pick * len(open_patients))]
            p = slot[0]
            slot[1] -= 1
            open_patients = [s for s in open_patients if s[1] > 0]
        else:
            p = n_patients
            n_patients += 1
            extra = 0 if u_cap < 0.88 else (1 if u_cap < 0.97 else 2)
            if extra:
                open_patients.append([p, extra])
        prng = _patient_rng(seed, p)
        pid = str(uuid.UUID(bytes=prng.bytes(16), version=4))
        sex = "M" if prng.random() < 0.55 else "F"
        base_age = int(np.clip(prng.normal(48, 17), 2, 92))

        rng = np.random.default_rng(_image_streams(seed, index)[0])
        positive = sample_presence(rng)
        two = rng.random() < TWO_LESION_SHARE
        union = sample_lesion_area(rng)
        split = rng.uniform(0.3, 0.7)
        u_view, u_jpeg, u_age, u_sp = rng.random(4)
        areas: tuple[float, ...] = ()
        if positive:
            areas = (union * split, union * (1 - split)) if two and union >= 400 else (union,)
        specs.append(
            CaseSpec(
                seed=seed,
                index=index,
                image_id=_uid(seed, index, "sop"),
                study_uid=_uid(seed, index, "study"),
                series_uid=_uid(seed, index, "series"),
                patient_index=p,
                patient_id=pid,
                sex=sex,
                age=base_age + int(u_age * 3),
                view="PA" if u_view < 0.6 else "AP",
                pixel_spacing_1024=(0.139, 0.143, 0.168, 0.171)[int(u_sp * 4)],
                positive=positive,
                lesion_areas_1024=areas,
                jpeg=bool(u_jpeg < jpeg_share),
                lesion_contrast=lesion_contrast,
            )
        )
    return specs


def _image_streams(seed: int, index: int) -> list[np.random.SeedSequence]:
    """Independent streams of image ``index``: spec, anatomy, lesion shapes, look-alikes/devices.

    A positive and its negative twin (the same spec without lesions) share the anatomy and the
    devices; they differ in the lesions and possibly a skin fold (rarer in positives).
    """
    return np.random.SeedSequence([seed, index]).spawn(4)


def _patient_rng(seed: int, patient_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PATIENT_STREAM, patient_index)))


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


# ----------------------------------------------------------------------------- files
def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def dicom_bytes(spec: CaseSpec, image: np.ndarray) -> bytes:
    """A Part-10 Secondary Capture file for the uint8 image (H, W), tags like the challenge files."""
    from pydicom import config, dcmwrite
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = spec.image_id
    meta.TransferSyntaxUID = JPEGBaseline8Bit if spec.jpeg else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = spec.image_id
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {spec.view}"
    ds.PatientName = spec.patient_id
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.sex
    # the challenge files store a bare number (e.g. '62'), which is not a valid AS value
    ds.add(DataElement(0x00101010, "AS", str(spec.age), validation_mode=config.IGNORE))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageComments = "dualstage synthetic phantom (not patient data)"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    sp = round(spec.pixel_spacing_1024 * 1024 / image.shape[0], 4)
    ds.PixelSpacing = [sp, sp]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if spec.jpeg:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        buf = io.BytesIO()
        Image.fromarray(image, "L").save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _make_one(spec: CaseSpec, out_dir: Path, size: int, layout: str) -> dict:
    """Render and write one image (and mask); return its table row plus its RLE rows."""
    image, masks = render_case(spec, size)
    union = np.zeros((size, size), dtype=bool)
    for m in masks:
        union |= m
    row = {
        "image_id": spec.image_id,
        "patient_id": spec.patient_id,
        "has_pneumothorax": bool(union.any()),
        "n_lesions": int(sum(m.any() for m in masks)),
        "area_px": int(union.sum()),
        "target_area_px": round(sum(spec.lesion_areas_1024) * (size / 1024.0) ** 2, 1),
        "sex": spec.sex,
        "age": spec.age,
        "view": spec.view,
        "jpeg": spec.jpeg and layout == "siim",
        "index": spec.index,
    }
    if layout == "siim":
        rel = Path("dicom-images-train", spec.study_uid, spec.series_uid, f"{spec.image_id}.dcm")
        atomic_write_bytes(out_dir / rel, dicom_bytes(spec, image))
        row["path"], row["mask_path"] = rel.as_posix(), ""
    else:
        name = f"{spec.index}_train_{int(row['has_pneumothorax'])}_.png"
        atomic_write_bytes(out_dir / "png_images" / name, _png_bytes(image))
        atomic_write_bytes(out_dir / "png_masks" / name, _png_bytes(union.astype(np.uint8) * 255))
        row["path"], row["mask_path"] = f"png_images/{name}", f"png_masks/{name}"
    row["rles"] = [encode(m) for m in masks if m.any()] or ["-1"]
    return row


def generate(
    out_dir: str | os.PathLike,
    n: int,
    size: int = 1024,
    layout: str = "siim",
    seed: int = 0,
    jpeg_share: float = 0.3,
    preview: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
    lesion_contrast: float = 1.0,
) -> pd.DataFrame:
    """Write ``n`` phantoms in the ``siim`` or ``png`` layout under ``out_dir``; return the index.

    Columns: image_id, patient_id, has_pneumothorax, n_lesions, area_px (union at ``size``),
    target_area_px, sex, age, view, jpeg, index, path and mask_path (relative to ``out_dir``).
    Existing files of the same names are overwritten with identical content; other files in
    ``out_dir`` are left alone.
    """
    from tqdm.auto import tqdm

    if layout not in ("siim", "png"):
        raise ValueError(f"layout must be 'siim' or 'png', got {layout!r}")
    if n < 1 or size < 64:
        raise ValueError(f"need n >= 1 and size >= 64, got n={n}, size={size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lesion_contrast <= 0:
        raise ValueError(f"lesion_contrast must be > 0, got {lesion_contrast}")
    specs = plan_cases(n, seed, jpeg_share, lesion_contrast)
    bar = tqdm(total=n, desc=f"phantom {layout} {size}px", unit="img", disable=not progress)
    if workers > 1:
        from joblib import Parallel, delayed

        jobs = Parallel(n_jobs=workers, return_as="generator", batch_size=4)(
            delayed(_make_one)(s, out, size, layout) for s in specs
        )
    else:
        jobs = (_make_one(s, out, size, layout) for s in specs)
    rows = []
    for row in jobs:
        rows.append(row)
        bar.update(1)
    bar.close()

    rles = [(r["image_id"], rle) for r in rows for rle in r.pop("rles")]
    table = pd.DataFrame(rows)
    if layout == "siim":
        text = "ImageId, EncodedPixels\n" + "".join(f"{i}, {rle}\n" for i, rle in rles)
        atomic_write_bytes(out / "train-rle.csv", text.encode())
    else:
        png = pd.DataFrame(
            {
                "new_filename": table["path"].str.slice(len("png_images/")),
                "ImageId": table["image_id"],
                "has_pneumo": table["has_pneumothorax"].astype(int),
            }
        )
        atomic_write_bytes(out / "stage_1_train_images.csv", png.to_csv(index=False).encode())
    atomic_write_bytes(out / "phantom_index.csv", table.to_csv(index=False).encode())
    if preview is not None:
        write_preview(out, table, preview, layout)
    return table


# ----------------------------------------------------------------------------- preview
def _read_back(out_dir: Path, row: pd.Series, layout: str, rle_rows: dict[str, list[str]]) -> tuple:
    """Image uint8 (H, W) and union mask bool (H, W) read from the written files."""
    if layout == "siim":
        import pydicom

        image = pydicom.dcmread(out_dir / row["path"]).pixel_array
        mask = decode(rle_rows[row["image_id"]], *image.shape)
    else:
        image = np.asarray(Image.open(out_dir / row["path"]))
        mask = np.asarray(Image.open(out_dir / row["mask_path"])) > 127
    return image, mask


def write_preview(
    out_dir: str | os.PathLike,
    table: pd.DataFrame,
    path: str | os.PathLike,
    layout: str = "siim",
    k: int = 16,
    tile_px: int = 180,
) -> None:
    """Contact sheet of the first ``k`` images (read back from disk) with red mask outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rle_rows: dict[str, list[str]] = {}
    if layout == "siim":
        rle = pd.read_csv(out / "train-rle.csv", skipinitialspace=True, dtype=str)
        for image_id, enc in zip(rle.iloc[:, 0], rle.iloc[:, 1], strict=True):
            rle_rows.setdefault(image_id, []).append(enc)
    rows = table.head(k)
    ncol = min(4, len(rows))
    nrow = math.ceil(len(rows) / ncol)
    dpi = 100
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(ncol * tile_px / dpi, nrow * (tile_px + 16) / dpi), dpi=dpi, squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel()[: len(rows)], rows.iterrows(), strict=True):
        image, mask = _read_back(out, row, layout, rle_rows)
        step = max(1, image.shape[0] // 256)
        ax.imshow(image[::step, ::step], cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
        if mask.any():
            ax.contour(mask[::step, ::step].astype(np.float32), levels=[0.5], colors="red", linewidths=0.6)
        label = f"pos {int(row['area_px'])} px" if row["has_pneumothorax"] else "neg"
        ax.set_title(f"...{row['image_id'][-6:]} {label}", fontsize=6.5, pad=2)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.97, wspace=0.02, hspace=0.12)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dualstage.data.phantom --out DIR [--n 600] ...``."""
    ap = argparse.ArgumentParser(prog="python -m dualstage.data.phantom", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--n", type=int, default=600, help="number of images")
    ap.add_argument("--size", type=int, default=1024, help="image side in px")
    ap.add_argument("--layout", choices=("siim", "png"), default="siim")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--jpeg-share", type=float, default=0.3, help="share of JPEG Baseline DICOMs (siim layout)"
    )
    ap.add_argument("--preview", default=None, help="write a contact sheet PNG here")
    ap.add_argument("--lesion-contrast", type=float, default=1.0, help=">1: darker pneumothoraces (demos)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    table = generate(
        a.out,
        a.n,
        size=a.size,
        layout=a.layout,
        seed=a.seed,
        jpeg_share=a.jpeg_share,
        preview=a.preview,
        workers=a.workers,
        progress=not a.quiet,
        lesion_contrast=a.lesion_contrast,
    )
    pos = table["has_pneumothorax"]
    print(
        f"wrote {len(table)} images ({int(pos.sum())} positive, {table['patient_id'].nunique()} patients) "
        f"to {a.out}"
    )


if __name__ == "__main__":
    main()

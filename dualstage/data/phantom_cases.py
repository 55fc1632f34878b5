"""Phantom cases: what each image will be (ids, patient, presence, lesion areas), decided before rendering.

See :mod:`dualstage.data.phantom` for the generator, the statistics and the layouts.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

POSITIVE_SHARE = 0.22
TWO_LESION_SHARE = 0.15
AREA_MEDIAN_1024 = 8600.0
AREA_SIGMA = 1.14
AREA_RANGE_1024 = (55.0, 161421.0)
RENDER_MAX = 512  # anatomy is rendered at clip(size, 256, RENDER_MAX) px, then resized to size
UID_PREFIX = "1.2.826.0.1.3680043.8.498.77."  # pydicom's UID root + a dualstage arc
_PATIENT_STREAM = 1
_SUBTLE_STREAM = 7  # its own stream: a subtle_share of 0 leaves every other draw unchanged
MAX_DEPTH = 0.8  # deepest collapse towards the hilum (fraction of the hilum-wall distance)
TWO_PI = 2.0 * math.pi


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
    return str(generate_uid(UID_PREFIX, entropy_srcs=["dualstage-phantom", str(seed), str(index), kind]))


def plan_cases(
    n: int, seed: int = 0, jpeg_share: float = 0.3, lesion_contrast: float = 1.0, subtle_share: float = 0.0
) -> list[CaseSpec]:
    """Decide ids, patients, presence, lesion areas and compression for images 0..n-1.

    ``subtle_share`` of the positives keep the default look (contrast 1) whatever
    ``lesion_contrast`` says: subtle pneumothoraces a model misses at high thresholds.

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
        prng = patient_rng(seed, p)
        pid = str(uuid.UUID(bytes=prng.bytes(16), version=4))
        sex = "M" if prng.random() < 0.55 else "F"
        base_age = int(np.clip(prng.normal(48, 17), 2, 92))

        rng = np.random.default_rng(image_streams(seed, index)[0])
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
                lesion_contrast=_contrast(seed, index, positive, lesion_contrast, subtle_share),
            )
        )
    return specs


def _contrast(seed: int, index: int, positive: bool, contrast: float, subtle_share: float) -> float:
    """The case's lesion contrast: 1 (the default look) for a ``subtle_share`` of positives."""
    if not positive or subtle_share <= 0:
        return contrast
    u = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SUBTLE_STREAM, index))).random()
    return 1.0 if u < subtle_share else contrast


def image_streams(seed: int, index: int) -> list[np.random.SeedSequence]:
    """Independent streams of image ``index``: spec, anatomy, lesion shapes, look-alikes/devices.

    A positive and its negative twin (the same spec without lesions) share the anatomy and the
    devices; they differ in the lesions and possibly a skin fold (rarer in positives).
    """
    return np.random.SeedSequence([seed, index]).spawn(4)


def patient_rng(seed: int, patient_index: int) -> np.random.Generator:
    """The generator of one patient's habitus (shared by all images of the patient)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PATIENT_STREAM, patient_index)))

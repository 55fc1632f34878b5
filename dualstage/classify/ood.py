"""Unlike the training data? A compact description of the training studies' images and a distance.

Each image, at the feature set's image size S (as ``classify features`` sees it), is described by

- 10 intensity statistics of its values in [0, 1] (:data:`STAT_NAMES`): quantiles 1 / 5 / 25 / 50 /
  75 / 95 / 99 %, mean, standard deviation, mean absolute difference of neighbouring pixels;
- its layout: the 8 x 8 grid of block means (64 values), standardised and projected on the training
  studies' first 16 principal components, plus the log norm of what those leave out;
- its DenseNet image features phi(I) (the classifier's own 1024 values, ``img_dn*``), the same way.

These 44 values get a Ledoit-Wolf covariance; an image's distance is its Mahalanobis distance.
The warning threshold is a high percentile (99th) of the training studies' *out-of-fold* distances:
study i's distance is measured against a description fit on the other folds only, so the threshold
is never chosen on a distance to a description that contains the study itself. New images are
measured against the description of every training study. ``training_profile.json`` (owned by
:class:`~dualstage.artifacts.layout.ExperimentDir`) holds it; :func:`training_profile` builds it once from
the experiment's own artifacts (the classifier's feature set and the prepared cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.covariance import LedoitWolf

from dualstage.artifacts.feature_set import load_feature_table, read_settings
from dualstage.artifacts.layout import ExperimentDir
from dualstage.core.io import write_json_atomic
from dualstage.data.cache import cache_paths
from dualstage.data.images import read_image_file
from dualstage.data.splits import read_folds

__all__ = [
    "STAT_NAMES",
    "image_descriptors",
    "fit_profile",
    "distances",
    "oof_distances",
    "TrainingProfile",
    "training_profile",
    "build_training_profile",
]

STAT_NAMES = ("q01", "q05", "q25", "q50", "q75", "q95", "q99", "mean", "std", "gradient")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
GRID = 8
N_COMPONENTS = 16
PERCENTILE = 99.0
VERSION = 1


def image_descriptors(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(statistics (N, 10), layout grid (N, 64)) of uint8 images (N, S, S), values scaled to [0, 1]."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    if x.ndim != 3:
        raise ValueError(f"images must be (N, S, S), got shape {x.shape}")
    q = np.quantile(x.reshape(len(x), -1), QUANTILES, axis=1).T
    grad = np.abs(np.diff(x, axis=1)).mean((1, 2)) + np.abs(np.diff(x, axis=2)).mean((1, 2))
    stats = np.column_stack([q, x.mean((1, 2)), x.std((1, 2)), grad])
    grid = np.stack([np.asarray(Image.fromarray(a, mode="F").resize((GRID, GRID), Image.BOX)) for a in x])
    return stats.astype(np.float64), grid.reshape(len(x), -1).astype(np.float64)


def _pca(a: np.ndarray, m: int) -> dict[str, np.ndarray]:
    """Standardise (N, D) rows and keep the first m principal axes: {mean (D,), scale (D,), axes (m, D)}."""
    mean, scale = a.mean(0), a.std(0) + 1e-6
    _, _, vt = np.linalg.svd((a - mean) / scale, full_matrices=False)
    return {"mean": mean, "scale": scale, "axes": vt[: min(m, len(vt))]}


def _project(p: dict[str, np.ndarray], a: np.ndarray) -> np.ndarray:
    """(N, m + 1): scores on the axes and the log norm of the residual."""
    z = (a - p["mean"]) / p["scale"]
    scores = z @ p["axes"].T
    residual = np.linalg.norm(z - scores @ p["axes"], axis=1)
    return np.column_stack([scores, np.log(residual + 1e-9)])


def _vectors(profile: dict, phi: np.ndarray, stats: np.ndarray, grid: np.ndarray) -> np.ndarray:
    parts = {
        k[4:]: {n: profile[f"{k}_{n}"] for n in ("mean", "scale", "axes")} for k in ("pca_grid", "pca_phi")
    }
    return np.column_stack([stats, _project(parts["grid"], grid), _project(parts["phi"], phi)])


def fit_profile(
    phi: np.ndarray, stats: np.ndarray, grid: np.ndarray, n_components: int = N_COMPONENTS
) -> dict:
    """The description of N studies: phi (N, 1024), stats (N, 10), grid (N, 64) -> {name: array}."""
    m = max(1, min(n_components, len(phi) - 1))
    profile = {}
    for key, a in (("pca_grid", grid), ("pca_phi", phi)):
        for name, value in _pca(np.asarray(a, np.float64), m).items():
            profile[f"{key}_{name}"] = value
    lw = LedoitWolf().fit(_vectors(profile, phi, stats, grid))
    profile["location"], profile["precision"] = lw.location_, lw.precision_
    return profile


def distances(profile: dict, phi: np.ndarray, stats: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(N,) Mahalanobis distances of N images to a :func:`fit_profile` description."""
    v = _vectors(profile, np.asarray(phi, np.float64), stats, grid) - profile["location"]
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", v, profile["precision"], v), 0.0))


def oof_distances(phi: np.ndarray, stats: np.ndarray, grid: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(N,) distance of each study to the description of the *other* folds' studies (folds (N,) int)."""
    folds = np.asarray(folds)
    if np.unique(folds).size < 2:
        raise ValueError("the out-of-fold distances need at least 2 folds")
    out = np.zeros(len(folds))
    for k in np.unique(folds):
        held = folds == k
        profile = fit_profile(phi[~held], stats[~held], grid[~held])
        out[held] = distances(profile, phi[held], stats[held], grid[held])
    return out


class TrainingProfile:
    """The saved description (``training_profile.json``): ``distance`` of new images, ``threshold``."""

    def __init__(self, record: dict):
        self.record = record
        self.threshold = float(record["threshold"])
        self.settings = dict(record["settings"])
        self.image_size = int(self.settings["image_size"])
        self._profile = {k: np.asarray(v, dtype=np.float64) for k, v in record["profile"].items()}

    def distance(self, phi: np.ndarray, images: np.ndarray) -> np.ndarray:
        """(N,) distances of images (N, S, S) uint8 with DenseNet features phi (N, 1024)."""
        stats, grid = image_descriptors(images)
        return distances(self._profile, phi, stats, grid)

    @classmethod
    def read(cls, path: str | Path) -> TrainingProfile:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid training profile ({exc}); delete it to rebuild") from None
        if record.get("version") != VERSION:
            raise ValueError(f"{path}: training profile version {record.get('version')}, expected {VERSION}")
        return cls(record)


def _feature_set(exp: ExperimentDir) -> Path:
    """The classifier's training feature set: ``oof`` (cross-fitted), else ``val``."""
    for name in ("oof", "val"):
        if (exp.feature_set(name) / "features.npz").is_file():
            return exp.feature_set(name)
    raise FileNotFoundError(f"{exp.features}: no oof or val feature set; run `classify features` first")


def _training_images(exp: ExperimentDir, fdir: Path, ids: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) uint8 training images: the prepared cache the features read, else the source."""
    record = json.loads((fdir / "features.json").read_text()) if (fdir / "features.json").is_file() else {}
    cache = record.get("cache_size")
    manifest = exp.prepared / "manifest.csv"
    sources = {}
    if manifest.is_file():
        table = pd.read_csv(manifest, dtype={"image_id": str}, usecols=["image_id", "image_path"])
        sources = dict(zip(table["image_id"], table["image_path"], strict=True))
    out = np.zeros((len(ids), size, size), np.uint8)
    for k, image_id in enumerate(ids):
        path = cache_paths(exp.prepared, cache, image_id)[0] if cache else None
        if path is None or not path.is_file():
            path = Path(str(sources.get(image_id, "")))
        if not path.is_file():
            raise FileNotFoundError(
                f"{image_id}: training image in neither the prepared cache nor {manifest}"
            )
        image = read_image_file(path)[0]
        if image.shape != (size, size):
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
        out[k] = image
    return out


def _listed(profile: dict) -> dict:
    """Arrays as nested lists of 7 significant digits (a compact, exact-enough JSON)."""
    return {k: np.vectorize(lambda v: float(f"{v:.7g}"))(np.asarray(v)).tolist() for k, v in profile.items()}


def build_training_profile(exp_dir: str | Path, percentile: float = PERCENTILE) -> TrainingProfile:
    """Describe the experiment's training studies, choose the threshold out of fold, write the JSON."""
    exp = ExperimentDir(exp_dir)
    fdir = _feature_set(exp)
    ids, X, names, _ = load_feature_table(fdir)
    phi = X[:, np.char.startswith(names.astype(str), "img_dn")].astype(np.float64)
    settings = read_settings(fdir)
    images = _training_images(exp, fdir, ids, int(settings["image_size"]))
    stats, grid = image_descriptors(images)
    folds = read_folds(exp.splits_csv, ids, allow_test=True)
    oof = oof_distances(phi, stats, grid, folds)
    record = {
        "version": VERSION,
        "what": "Mahalanobis distance (Ledoit-Wolf) of intensity statistics, 8x8 layout and DenseNet image "
        "features (16 principal components each + residual); threshold: a percentile of the training "
        "studies' out-of-fold distances (each to a description fit without its own fold)",
        "feature_set": fdir.name,
        "settings": settings,
        "n_studies": int(len(ids)),
        "folds": sorted(int(f) for f in np.unique(folds)),
        "stat_names": list(STAT_NAMES),
        "percentile": float(percentile),
        "threshold": float(np.percentile(oof, percentile)),
        "oof_distance_quantiles": {str(q): float(np.percentile(oof, q)) for q in (50, 90, 99, 100)},
        "oof_distances": {
            "image_id": ids.tolist(),
            "fold": folds.tolist(),
            "distance": oof.round(4).tolist(),
        },
        "profile": _listed(fit_profile(phi, stats, grid)),
    }
    write_json_atomic(exp.training_profile, record)
    return TrainingProfile(record)


def training_profile(exp_dir: str | Path, build: bool = True) -> TrainingProfile | None:
    """The experiment's saved profile; built (and saved) on first use when ``build``, else None."""
    exp = ExperimentDir(exp_dir)
    if exp.training_profile.is_file():
        return TrainingProfile.read(exp.training_profile)
    return build_training_profile(exp.root) if build else None

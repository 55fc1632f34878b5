"""A feature set (``features/<set>/``): the typed hand-off of ``classify features``.

    features.npz          image_id (N,) str, X (N, F) float32, feature_names (F,) str
    index.csv             image_id, split, fold_model, has_truth, has_pneumothorax, stat_* columns
    features.json         the settings the rows were made with (weights, image_size, version) + counts
    parts/<image_id>.npy  (F,) float32 row of one image: the resume cache
    rejected.csv          item (image id), stage, reason: images left out (unreadable source, ...)

``classify features`` writes it; ``tune`` and ``gate`` read it through :func:`load_feature_table`
and compare settings through :func:`read_settings` / :func:`check_same_settings`.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.core.io import HandoffError

__all__ = [
    "SETTING_KEYS",
    "load_feature_table",
    "read_settings",
    "check_same_settings",
    "truthy",
    "labels_of",
    "rejected_ids",
]

SETTING_KEYS = ("weights", "weights_sha256", "image_size", "version")


def load_feature_table(features_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """(ids (N,) str, X (N, F) float32, names (F,) str, index rows aligned to ids) of a feature set.

    Checked: readable (a truncated or mistyped file is a HandoffError naming it), X numeric, finite
    and (N, F), ids unique and each listed in index.csv."""
    d = Path(features_dir)
    npz, csv = d / "features.npz", d / "index.csv"
    for p in (npz, csv):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; run `classify features` first")
    try:
        with np.load(npz, allow_pickle=False) as z:
            missing = [k for k in ("image_id", "X", "feature_names") if k not in z.files]
            if missing:
                raise HandoffError(f"{npz}: missing arrays {missing}; re-run `classify features`")
            ids, X, names = z["image_id"], z["X"], z["feature_names"]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, HandoffError):
            raise
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise HandoffError(
            f"{npz}: unreadable features file ({reason}); re-run `classify features`"
        ) from None
    ids, names = _strings(ids, npz, "image_id"), _strings(names, npz, "feature_names")
    if X.dtype.kind not in "fiu" or X.ndim != 2 or X.shape != (ids.size, names.size):
        raise HandoffError(
            f"{npz}: X ({X.dtype} {X.shape}) must be numeric (len(image_id)={ids.size}, "
            f"len(feature_names)={names.size})"
        )
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise HandoffError(f"{npz}: X holds NaN or infinite values; re-run `classify features`")
    if len(set(ids.tolist())) != ids.size:
        raise HandoffError(f"{npz}: image_id: duplicate image ids")
    try:
        index = pd.read_csv(csv, dtype={"image_id": str})
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{csv}: unreadable index ({' '.join(str(exc).split())})") from None
    if "image_id" not in index.columns:
        raise HandoffError(f"{csv}: no image_id column")
    index = index.drop_duplicates("image_id").set_index("image_id")
    absent = np.setdiff1d(ids, index.index.to_numpy(dtype=str))
    if absent.size:
        raise HandoffError(f"{csv}: {absent.size} feature rows have no index row (e.g. {absent[0]})")
    return ids, X, names, index.loc[ids].reset_index()


def _strings(values: np.ndarray, path: Path, name: str) -> np.ndarray:
    """A 1-D array of strings (HandoffError naming the file and the array otherwise)."""
    if values.dtype.kind not in "US" or values.ndim != 1:
        raise HandoffError(
            f"{path}: {name}: expected a 1-D array of strings, got {values.dtype} {values.shape}"
        )
    return values.astype(str)


def read_settings(features_dir: str | Path) -> dict:
    """{weights, weights_sha256, image_size, version} recorded in ``features.json`` ({} when absent)."""
    path = Path(features_dir) / "features.json"
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return {k: record.get(k) for k in SETTING_KEYS}


def _describe(s: dict) -> str:
    return f"weights={s.get('weights')!r}, image_size={s.get('image_size')}"


def check_same_settings(expected: dict, features_dir: str | Path, what: str) -> None:
    """ValueError naming both settings when ``features_dir`` was made differently from ``expected``."""
    got = read_settings(features_dir)
    if not expected or not got:
        return
    if any(expected.get(k) != got.get(k) for k in SETTING_KEYS):
        raise ValueError(
            f"{features_dir}: features made with {_describe(got)}, but {what} was fit on features made with "
            f"{_describe(expected)}; re-run `classify features` with those settings"
        )


def truthy(values) -> np.ndarray:
    """(N,) bool of a 0/1, True/False or "1"/"true" column."""
    return pd.Series(values).astype(str).str.strip().str.lower().isin(("1", "1.0", "true")).to_numpy()


def labels_of(index: pd.DataFrame, source: str) -> np.ndarray:
    """(N,) int 0/1 presence labels from an index frame; ValueError when missing."""
    if "has_pneumothorax" not in index or index["has_pneumothorax"].isna().any():
        raise ValueError(f"{source}: has_pneumothorax labels missing for some rows")
    return truthy(index["has_pneumothorax"]).astype(np.int64)


def rejected_ids(features_dir: str | Path, exclude=()) -> dict[str, str]:
    """{image_id: reason} of ``rejected.csv`` (images ``classify features`` left out), but ``exclude``."""
    path = Path(features_dir) / "rejected.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"item": str}, keep_default_na=False)
    if not {"item", "reason"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns item, stage, reason")
    skip = set(np.asarray(exclude, dtype=str).tolist())
    return {i: r for i, r in zip(table["item"], table["reason"], strict=True) if i not in skip}

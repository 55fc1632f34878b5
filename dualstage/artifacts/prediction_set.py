"""A prediction set (``predictions/<set>/``): the typed hand-off of ``segment predict``.

    maps/<image_id>.png    q = round(p * 255), (H, W) uint8 on the source image's grid
    hists/<image_id>.npy   (2, 256) int64 histogram of q outside / inside the true mask
    index.csv              image_id, split, fold_model, height, width, has_truth, has_pneumothorax,
                           true_area_px [, image_path, frame]
    histograms.npz         every image with truth, for the sweep (dualstage.core.gating.load_histograms)
    rejected.csv           new images that could not be read (file, stage, reason)
    predict.json           models, checkpoints, TTA, precision, timing

``predict`` is the only writer; features, the sweep, the gate and the report read through it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dualstage.core import gating
from dualstage.core.io import (
    HandoffError,
    ensure_inside,
    read_npy,
    write_csv_atomic,
    write_json_atomic,
    write_npy_atomic,
    write_png_atomic,
)

__all__ = ["PredictionSet", "INDEX_COLUMNS", "SPLITS", "check_input_set_name", "find_sets"]

INDEX_COLUMNS = (
    "image_id",
    "split",
    "fold_model",
    "height",
    "width",
    "has_truth",
    "has_pneumothorax",
    "true_area_px",
)


def _index_problem(index: pd.DataFrame) -> str | None:
    """What is wrong with an index.csv frame ("column: ..."), or None."""
    if "image_id" not in index.columns:
        return "no image_id column"
    if index["image_id"].isna().any():
        return "image_id: an empty id"
    ids = index["image_id"].astype(str)
    bad = ids[(ids.str.strip() == "") | ids.str.contains(r"[/\\\x00]") | ids.isin([".", ".."])]
    if len(bad):
        return f"image_id: {bad.iloc[0]!r} is not an image id"
    if ids.duplicated().any():
        return f"image_id: {ids[ids.duplicated()].iloc[0]!r} listed twice"
    for column in ("height", "width"):
        if column in index.columns:
            values = pd.to_numeric(index[column], errors="coerce")
            wrong = values.isna() | (values <= 0) | (values % 1 != 0)
            if wrong.any():
                return f"{column}: expected positive integers, got {index[column][wrong].iloc[0]!r}"
    if "has_truth" in index.columns and not index["has_truth"].astype(str).isin(["0", "1"]).all():
        return "has_truth: expected 0 or 1"
    return None


class PredictionSet:
    """One folder of probability maps with its index (and truth histograms when known)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def name(self) -> str:
        return self.folder.name

    def __repr__(self) -> str:
        return f"PredictionSet({str(self.folder)!r})"

    # -- paths -------------------------------------------------------------------------------
    def _child(self, sub: str, image_id: str, suffix: str) -> Path:
        return ensure_inside(self.folder, self.folder / sub / f"{image_id}{suffix}")

    def map_path(self, image_id: str) -> Path:
        return self._child("maps", image_id, ".png")

    def hist_path(self, image_id: str) -> Path:
        return self._child("hists", image_id, ".npy")

    @property
    def index_path(self) -> Path:
        return self.folder / "index.csv"

    @property
    def histograms_path(self) -> Path:
        return self.folder / "histograms.npz"

    @property
    def info_path(self) -> Path:
        return self.folder / "predict.json"

    @property
    def rejected_path(self) -> Path:
        return self.folder / "rejected.csv"

    def exists(self) -> bool:
        return self.index_path.is_file()

    def has_truth(self) -> bool:
        return self.histograms_path.is_file()

    # -- readers -----------------------------------------------------------------------------
    def index(self) -> pd.DataFrame:
        """index.csv (image_id as str); FileNotFoundError naming the step that writes it, HandoffError
        naming the file and the column when it is malformed (unparsable, ids missing, repeated or not
        file names, sizes not positive integers, has_truth not 0/1)."""
        path = self.index_path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `segment predict` first")
        try:
            index = pd.read_csv(path, dtype={"image_id": str})
        except (ValueError, UnicodeDecodeError) as exc:
            raise HandoffError(f"{path}: unreadable index ({' '.join(str(exc).split())})") from None
        problem = _index_problem(index)
        if problem:
            raise HandoffError(f"{path}: {problem}; re-run `segment predict`")
        return index

    def read_map(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 map q of one image."""
        path = self.map_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no probability map for {image_id}")
        with Image.open(path) as im:
            return np.asarray(im)

    def read_hist(self, image_id: str) -> np.ndarray:
        return read_npy(self.hist_path(image_id))

    def histograms(self) -> gating.Histograms:
        """Truth histograms of every image with truth (N, 2, 256)."""
        return gating.load_histograms(self.histograms_path)

    def info(self) -> dict:
        return json.loads(self.info_path.read_text()) if self.info_path.is_file() else {}

    def is_done(self, image_id: str, with_truth: bool) -> bool:
        """Whether the map (and the histogram, when truth is known) of an image are written."""
        return self.map_path(image_id).is_file() and (not with_truth or self.hist_path(image_id).is_file())

    # -- writers (segment predict) ------------------------------------------------------------
    def write_image(self, image_id: str, q: np.ndarray, truth: np.ndarray | None) -> None:
        """Write one map (H, W) uint8 and, with a (H, W) bool truth mask, its histogram."""
        write_png_atomic(self.map_path(image_id), q)
        if truth is not None:
            write_npy_atomic(self.hist_path(image_id), gating.histogram(q, truth))

    def write_index(self, index: pd.DataFrame) -> None:
        """index.csv, then histograms.npz from the per-image histograms of the rows with truth."""
        extra = [c for c in ("image_path", "frame") if c in index]
        write_csv_atomic(index[[*INDEX_COLUMNS, *extra]], self.index_path)
        known = index[index.has_truth == 1]
        if len(known):
            hist = np.stack([self.read_hist(i) for i in known["image_id"]])
            gating.write_histograms(
                self.histograms_path,
                known["image_id"].to_numpy(),
                hist,
                known["height"].to_numpy(),
                known["width"].to_numpy(),
            )

    def write_rejected(self, rows: list[dict]) -> None:
        write_csv_atomic(pd.DataFrame(rows, columns=["item", "stage", "reason"]), self.rejected_path)

    def write_info(self, info: dict) -> None:
        write_json_atomic(self.info_path, info)

    def rule_counts(self, ids: np.ndarray, rule: dict) -> np.ndarray:
        """(N, 4) int64 (inter, pred_area, true_area, n_pixels) of ``rule`` for ``ids``, from histograms."""
        hist = self.histograms()
        pos = pd.Series(np.arange(hist.image_id.size), index=hist.image_id).reindex(ids)
        if pos.isna().any():
            missing = np.asarray(ids)[pos.isna().to_numpy()]
            raise ValueError(
                f"{self.histograms_path}: no histogram for {missing.size} rows (e.g. {missing[0]})"
            )
        counts = np.stack(gating.rule_counts(hist.hist, hist.height, hist.width, rule), axis=1)
        return counts[pos.to_numpy(dtype=np.int64)]


SPLITS = ("oof", "val", "test", "all")  # the set names the pipeline owns


def check_input_set_name(name: str) -> str:
    """``name`` for a set of new images; ValueError when the pipeline owns it (a split such as
    ``oof`` or ``test``, or a name derived from one such as ``oof_fold_0`` / ``test_fold_3``)."""
    if name in SPLITS or any(name.startswith(f"{s}_") for s in SPLITS):
        raise ValueError(
            f"--set {name!r}: the pipeline owns this set name ({', '.join(SPLITS)} and names starting "
            "with them); give new images their own name, e.g. --set new"
        )
    return name


def find_sets(pred_root: str | Path) -> dict[str, int]:
    """{set name: number of images with truth} for every prediction set folder under ``pred_root``."""
    root = Path(pred_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: predictions folder not found")
    sets = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if (d / "histograms.npz").is_file():
            try:
                with np.load(d / "histograms.npz", allow_pickle=False) as z:
                    sets[d.name] = int(z["image_id"].shape[0]) if "image_id" in z.files else 0
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ValueError(f"{d / 'histograms.npz'}: unreadable histograms file: {exc}") from None
        elif (d / "index.csv").is_file() or (d / "maps").is_dir():
            sets[d.name] = 0
    return sets

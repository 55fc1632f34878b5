"""``segment prepare``: one manifest, rejections, splits and a decoded cache per size.

Output folder::

    manifest.csv   one row per usable image (ids, source, size, presence, area, patient tags)
    masks.csv      ImageId, EncodedPixels: each image's true mask (union) in the challenge's
                   format on its own pixel grid (the exact truth for evaluation at full size)
    rejected.csv   item, reason: everything that was not used, and why
    splits.csv     image_id, group (patient), has_pneumothorax, split, fold
    stats.json     dataset pixel mean / std over the train split (for normalisation)
    cache/<size>/images/<image_id>.png   uint8 grayscale, resized to size x size
    cache/<size>/masks/<image_id>.png    uint8 0/255 union of lesions, same grid

Idempotent: images whose manifest row and cache files exist are not decoded again.
``--out`` may lie inside ``--data`` (it is left out of the scan) but may not be ``--data``
itself. Temporary files a killed run left behind are removed first; workers are stopped when
prepare is interrupted (:mod:`dualstage.data.workers`).
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.config import PAPER_TEST_FRACTION, PAPER_VAL_FRACTION
from dualstage.core.io import atomic_write_text, clean_stale_tmp, write_csv_atomic
from dualstage.core.locks import holding
from dualstage.core.progress import progress as progress_iter
from dualstage.data import limits
from dualstage.data.annotations import read_rle_csv
from dualstage.data.cache import SIZE_RANGE, cache_paths, process_item
from dualstage.data.layouts import Item, scan
from dualstage.data.splits import make_splits
from dualstage.data.workers import WorkerPool, interruptible

__all__ = ["prepare", "PrepareError", "MANIFEST_COLUMNS", "check_options"]

MANIFEST_COLUMNS = [
    "image_id",
    "image_path",
    "layout",
    "height",
    "width",
    "has_pneumothorax",
    "mask_area_px",
    "mask_area_1024",
    "n_lesions",
    "patient_id",
    "sex",
    "age",
    "view_position",
    "photometric",
    "transfer_syntax",
    "pixel_mean",
    "pixel_sq_mean",
    "source_bytes",
]


class PrepareError(RuntimeError):
    """A bad item under ``--strict``."""


def _reusable(previous: pd.DataFrame, items: list[Item], out: Path, sizes: list[int]) -> dict[str, dict]:
    """Manifest rows of a previous run that are still valid (same file, cache complete)."""
    if previous.empty:
        return {}
    prev = previous.set_index("image_id")
    keep = {}
    for item in items:
        if item.image_id not in prev.index:
            continue
        row = prev.loc[item.image_id]
        if row["image_path"] != item.image_path or int(row["source_bytes"]) != os.path.getsize(
            item.image_path
        ):
            continue
        if all(cache_paths(out, s, item.image_id)[0].exists() for s in sizes):
            keep[item.image_id] = {"image_id": item.image_id, **row.to_dict()}
    return keep


def check_options(
    sizes: tuple[int, ...], n_folds: int, workers: int, test_fraction: float, val_fraction: float
) -> list[int]:
    """Range-check prepare's options (``ValueError`` naming the option); returns the sorted sizes."""
    if not sizes:
        raise ValueError("--sizes: give at least one cache size")
    lo, hi = SIZE_RANGE
    for size in sizes:
        if isinstance(size, bool) or int(size) != size or not lo <= int(size) <= hi:
            raise ValueError(f"--sizes {size}: each cache size must be an integer in [{lo}, {hi}] px")
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"--folds {n_folds}: k folds need k >= 2")
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise ValueError(f"--workers {workers}: must be an integer >= 0")
    for name, value in (("--test-fraction", test_fraction), ("--val-fraction", val_fraction)):
        if not 0 < float(value) < 1:
            raise ValueError(f"{name} {value}: must be in (0, 1)")
    if test_fraction + val_fraction >= 1:
        raise ValueError(f"--test-fraction {test_fraction} + --val-fraction {val_fraction}: must sum below 1")
    return sorted({int(s) for s in sizes})


def _check_out(data: Path, out: Path) -> None:
    """Refuse an output folder that is the data folder, or a data folder inside the cache."""
    data_r, out_r = data.resolve(), out.resolve()
    if data_r == out_r:
        raise ValueError(
            f"--out {out} is the --data folder; choose another folder (a subfolder of --data is fine)"
        )
    cache = out_r / "cache"
    if data_r == cache or cache in data_r.parents:
        raise ValueError(f"--data {data} lies inside the cache of --out {out}; choose another --out")


def _clean_tmp(out: Path, sizes: list[int]) -> None:
    """Remove temporary files a killed run left in the output and cache folders."""
    folders = [out] + [out / "cache" / str(s) / sub for s in sizes for sub in ("images", "masks")]
    for folder in folders:
        if folder.is_dir():
            clean_stale_tmp(folder)


def _previous(out: Path) -> pd.DataFrame:
    """The previous run's manifest joined with its true masks (empty when there is none)."""
    manifest_path = out / "manifest.csv"
    if not (manifest_path.exists() and (out / "masks.csv").exists()):
        return pd.DataFrame()
    previous = pd.read_csv(manifest_path, dtype={"image_id": str, "patient_id": str}, keep_default_na=False)
    truth = read_rle_csv(out / "masks.csv", rejected=[])  # an unsafe id there is just not reused
    return previous.merge(truth[["image_id", "rle"]], on="image_id", how="inner")


def _decode(
    todo: list[Item],
    out: Path,
    sizes: list[int],
    workers: int,
    strict: bool,
    desc: str,
    progress: bool,
    max_pixels: int,
) -> tuple[list[dict], list[dict]]:
    """Decode the items (in worker processes when there are enough): (rows, rejected)."""
    rows, rejected = [], []
    job = partial(process_item, out=str(out), sizes=sizes, max_pixels=max_pixels)  # workers: spawned
    with WorkerPool(workers if len(todo) > 8 else 1) as pool:
        for result in progress_iter(
            pool.imap(job, todo), total=len(todo), desc=desc, unit="img", enabled=progress
        ):
            if "rejected" not in result:
                rows.append(result["row"])
            elif strict:
                bad = result["rejected"]
                raise PrepareError(f"{bad['item']}: {bad['reason']}")
            else:
                rejected.append(result["rejected"])
    return rows, rejected


def prepare(
    data: str | Path,
    out: str | Path,
    sizes: tuple[int, ...] = (256, 512, 1024),
    layout: str = "auto",
    annotations: str | Path | None = None,
    strict: bool = False,
    workers: int = 2,
    n_folds: int = 10,
    seed: int = 0,
    progress: bool = True,
    test_fraction: float = PAPER_TEST_FRACTION,
    val_fraction: float = PAPER_VAL_FRACTION,
    max_pixels: int | None = None,
) -> dict:
    """Prepare a dataset folder for training (see the module docstring for the outputs).

    Returns a summary dict (layout, counts, seconds, throughput). Under ``strict`` the
    first bad item raises :class:`PrepareError` naming it and the reason. SIGTERM is an
    interrupt here: the workers are stopped before it propagates. An image over the pixel limit
    ``max_pixels`` (default: the process's ``data.max_pixels``) is a rejected row. Holds the output
    folder's lock (:mod:`dualstage.core.locks`) for the run.
    """
    t0, data, out = time.perf_counter(), Path(data), Path(out)
    sizes = check_options(sizes, n_folds, workers, test_fraction, val_fraction)
    _check_out(data, out)
    layout, items, rejected = scan(data, layout, annotations, exclude=[out])
    if strict and rejected:
        raise PrepareError(f"{rejected[0]['item']}: {rejected[0]['reason']}")
    with holding(out, "segment prepare"):  # nothing is written before the scan found the data
        limit = limits.resolve(max_pixels)
        return _prepare_locked(
            data,
            out,
            sizes,
            layout,
            (items, rejected),
            strict,
            workers,
            n_folds,
            seed,
            progress,
            test_fraction,
            val_fraction,
            limit,
            t0,
        )


def _prepare_locked(
    data: Path,
    out: Path,
    sizes: list[int],
    layout: str,
    scanned: tuple,
    strict: bool,
    workers: int,
    n_folds: int,
    seed: int,
    progress: bool,
    test_fraction: float,
    val_fraction: float,
    max_pixels: int,
    t0: float,
) -> dict:
    """:func:`prepare` once its options are checked, the data scanned and the output folder locked."""
    items, rejected = scanned
    out.mkdir(parents=True, exist_ok=True)
    _clean_tmp(out, sizes)
    rows = _reusable(_previous(out), items, out, sizes)
    todo = [it for it in items if it.image_id not in rows]
    t_decode = time.perf_counter()
    with interruptible():
        new_rows, bad = _decode(todo, out, sizes, workers, strict, f"prepare {layout}", progress, max_pixels)
    rows.update((r["image_id"], r) for r in new_rows)
    rejected.extend(bad)
    decode_seconds = time.perf_counter() - t_decode
    if not rows:
        write_csv_atomic(pd.DataFrame(rejected, columns=["item", "reason"]), out / "rejected.csv")
        raise PrepareError(
            f"--data {data}: no usable image ({len(rejected)} rejected; see {out / 'rejected.csv'})"
        )
    manifest = (
        pd.DataFrame(list(rows.values()))[MANIFEST_COLUMNS].sort_values("image_id").reset_index(drop=True)
    )
    splits = make_splits(manifest, test_fraction, val_fraction, n_folds=n_folds, seed=seed)
    truth = pd.DataFrame(
        [(r["image_id"], r["rle"]) for r in rows.values()], columns=["ImageId", "EncodedPixels"]
    )
    write_csv_atomic(truth.sort_values("ImageId"), out / "masks.csv")
    write_csv_atomic(manifest, out / "manifest.csv")
    write_csv_atomic(pd.DataFrame(rejected, columns=["item", "reason"]), out / "rejected.csv")
    write_csv_atomic(splits, out / "splits.csv")
    train = manifest[manifest["image_id"].isin(splits.loc[splits["split"] == "train", "image_id"])]
    mean = float(train["pixel_mean"].mean())
    std = float(np.sqrt(max(train["pixel_sq_mean"].mean() - mean**2, 0.0)))
    stats = {"mean": mean, "std": std, "n_images": int(len(train)), "from": "train split, pixels / 255"}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2))
    summary = {
        "layout": layout,
        "images": int(len(manifest)),
        "positive": int(manifest["has_pneumothorax"].sum()),
        "rejected": len(rejected),
        "decoded_now": len(todo),
        "reused": len(items) - len(todo),
        "sizes": sizes,
        "split_counts": splits["split"].value_counts().to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
        "images_per_second": round(len(todo) / decode_seconds, 1) if todo and decode_seconds > 0 else None,
    }
    atomic_write_text(out / "prepare.json", json.dumps(summary, indent=2))
    return summary

"""``classify features``: DenseNet features of each image and of its predicted map, plus map statistics.

Input: one prediction set folder of ``segment predict`` (``maps/<id>.png``, ``index.csv``). Output::

    features.npz          image_id (N,) str, X (N, F) float32, feature_names (F,) str (index order)
    index.csv             image_id, split, fold_model, has_truth, has_pneumothorax, stat_* columns
    features.json         weights, image_size, counts, seconds, images/s
    parts/<image_id>.npy  (F,) float32 row of one image: the resume cache
    rejected.csv          item (image id), stage (source / map / image), reason: images left out

One bad image never stops a set: an image whose source file is missing or cannot be decoded, or
whose map cannot be read, is a ``rejected.csv`` row and is left out of features.npz / index.csv
(``classify gate apply`` then gives it no final mask); the others go on.

A row is Phi(I, M) = [phi(I); phi(M)] (the paper's eq. 16) followed by :data:`STAT_NAMES`: phi is one
shared DenseNet121 ``features`` trunk -> ReLU -> global average pool (1024 values), applied to the
image (grayscale x 3, ImageNet mean/std) and to the probability map q / 255 (same), both resized to
``image_size``. Statistics are computed on the full-grid map. ``weights="none"`` is a random init with
a fixed seed (0), so reruns and resumes agree, but such features are untrained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.artifacts.shard_records import Shard, shard_rows
from dualstage.classify.densenet import (
    N_DENSENET,
    describe_weights,
    embed,
    load_densenet,
    torchvision_version,
)
from dualstage.classify.map_stats import STAT_NAMES, feature_names, map_statistics
from dualstage.core.io import (
    atomic_write,
    read_npy,
    write_csv_atomic,
    write_json_atomic,
    write_npy_atomic,
)
from dualstage.core.locks import holding
from dualstage.core.progress import progress as progress_iter
from dualstage.data import limits
from dualstage.data.cache import CACHE_PIXELS, cache_paths, pick_cache_size
from dualstage.data.images import read_image_file
from dualstage.runtime.distributed import pick_device
from dualstage.runtime.precision import inference_dtype, precision_name

__all__ = ["extract_features", "map_statistics", "feature_names", "load_densenet", "embed", "STAT_NAMES"]

INDEX_COLUMNS = ("image_id", "split", "fold_model", "has_truth", "has_pneumothorax")
_FEATURE_VERSION = 1  # bump when a feature's definition changes: old parts are then refused


def _tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W) -> float (1, size, size) in [0, 1] (bilinear, as segment predict resizes)."""
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None]


class _Items(Dataset):
    """(image (1, S, S), map (1, S, S), stats (n_stats,) float64, position, failure) per image id.

    A failure is "stage: reason" ("" when the row is fine; then the tensors are zeros).
    """

    def __init__(
        self, pset: PredictionSet, ids: list[str], sources: list[Path], size: int, pixels: list[int]
    ):
        self.pset, self.ids, self.sources, self.size = pset, ids, sources, size
        self.pixels = pixels  # each source's pixel limit: data.max_pixels, or the cache's for our own files

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        stage = "map"
        try:
            q = self.pset.read_map(self.ids[i])
            stats = map_statistics(q)
            stage = "image"
            image, _ = read_image_file(self.sources[i], self.pixels[i])
            values = torch.tensor([stats[n] for n in STAT_NAMES], dtype=torch.float64)
            return _tensor(image, self.size), _tensor(q, self.size), values, i, ""
        except Exception as exc:  # noqa: BLE001 - any failure rejects this image only
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            empty = torch.zeros((1, self.size, self.size))
            zeros = torch.zeros(len(STAT_NAMES), dtype=torch.float64)
            return empty, empty.clone(), zeros, i, f"{stage}: {reason}"


def _sources(index: pd.DataFrame, prepared: Path | None, size: int | None) -> tuple[list, list[dict]]:
    """(image file of each row or None, rejected rows): the prepared cache, else ``image_path``.

    A row whose ``image_path`` is not a file is a rejected row; an index without the column
    (and images outside the cache) is an error of the whole set (FileNotFoundError).
    """
    out, rejected = [], []
    for row in index.itertuples(index=False):
        cached = cache_paths(prepared, size, row.image_id)[0] if size is not None else None
        if cached is not None and cached.is_file():
            out.append(cached)
            continue
        where = f"not in the prepared cache ({prepared or 'no prepared folder'})"
        if "image_path" not in index.columns:
            raise FileNotFoundError(
                f"image {row.image_id}: {where} and index.csv has no image_path column "
                "(re-run segment predict, which writes it)"
            )
        path = getattr(row, "image_path", None)
        if not isinstance(path, str) or not Path(path).is_file():
            reason = f"{where} and its image_path {path!r} is not a file"
            rejected.append({"item": row.image_id, "stage": "source", "reason": reason})
            out.append(None)
            continue
        out.append(Path(path))
    return out, rejected


def _check_record(record: Path, parts: Path, setting: dict) -> None:
    """Refuse to mix rows of another weights / image size (or of an unknown run) into ``parts``."""
    if record.is_file():
        old = json.loads(record.read_text())
        keys = ("weights", "weights_sha256", "image_size", "version", "precision")
        if any(old.get(k) != setting.get(k) for k in keys if k in old or k != "precision"):
            raise ValueError(
                f"{record.parent} holds features made with weights={old.get('weights')!r}, "
                f"image_size={old.get('image_size')}, precision={old.get('precision')}; now "
                f"weights={setting['weights']!r}, image_size={setting['image_size']}, precision="
                f"{setting['precision']}. Use another --out, or delete {record.parent}."
            )
    elif parts.is_dir() and any(parts.glob("*.npy")):
        raise ValueError(f"{parts} has rows but {record} is missing: use another --out, or delete it")


def _prediction_index(pset: PredictionSet) -> pd.DataFrame:
    """The set's index, checked: required columns present and every map written."""
    index = pset.index()
    lacking = [c for c in INDEX_COLUMNS if c not in index.columns]
    if lacking or index.empty:
        raise ValueError(f"{pset.index_path}: empty or missing columns {lacking}")
    no_map = [i for i in index["image_id"] if not pset.map_path(i).is_file()]
    if no_map:
        raise FileNotFoundError(f"{pset.folder / 'maps'}: {len(no_map)} maps missing, e.g. {no_map[:3]}")
    return index


def _extract_rows(ctx: dict, ids: list[str], sources: list[Path], todo: list[int]) -> float:
    """Embed the ``todo`` rows and write each as ``parts/<id>.npy`` (failures go to
    ``ctx["rejected"]``); returns the seconds spent."""
    dev, parts = ctx["device"], ctx["parts"]
    net = load_densenet(ctx["weights"])[0].to(dev).to(memory_format=torch.channels_last)
    if not ctx["record"].is_file():  # written once the net loaded: a failed load leaves no stale record
        write_json_atomic(ctx["record"], {**ctx["setting"], "status": "running"})
    t_run = time.perf_counter()
    picked, cache = [sources[k] for k in todo], ctx["cache_root"]
    pixels = [
        max(ctx["max_pixels"], CACHE_PIXELS) if cache in p.parents else ctx["max_pixels"] for p in picked
    ]
    data = _Items(ctx["pset"], [ids[k] for k in todo], picked, ctx["image_size"], pixels)
    loader = DataLoader(data, batch_size=ctx["batch_size"], num_workers=ctx["workers"], shuffle=False)
    for images, maps, stats, pos, failures in progress_iter(
        loader, desc="features", unit="batch", enabled=ctx["progress"]
    ):
        with torch.no_grad():
            phi = embed(net, torch.cat([images, maps]).to(dev), ctx["dtype"]).cpu().numpy()
        n = len(pos)
        rows = np.concatenate([phi[:n], phi[n:], stats.numpy()], axis=1).astype(np.float32)
        for row, p, failure in zip(rows, pos.tolist(), failures, strict=True):
            if failure:
                stage, reason = failure.split(": ", 1)
                ctx["rejected"].append({"item": data.ids[p], "stage": stage, "reason": reason})
                continue
            write_npy_atomic(parts / f"{data.ids[p]}.npy", row)
    return time.perf_counter() - t_run


def _write_outputs(out_dir: Path, index: pd.DataFrame, ids: list[str]) -> int:
    """features.npz and index.csv of ``ids`` (index rows in that order) from the parts; returns F."""
    names, parts = feature_names(), out_dir / "parts"
    X = np.stack([read_npy(parts / f"{i}.npy") for i in ids]).astype(np.float32)
    if X.shape[1] != len(names):
        raise ValueError(f"{parts}: rows have {X.shape[1]} values, expected {len(names)}; delete {out_dir}")

    def _write_npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(fh, image_id=np.asarray(ids, dtype=str), X=X, feature_names=np.asarray(names))

    atomic_write(out_dir / "features.npz", _write_npz)
    table = index.set_index("image_id").loc[ids].reset_index()[list(INDEX_COLUMNS)]
    table[list(STAT_NAMES)] = X[:, 2 * N_DENSENET :].astype(str).astype(np.float64)  # float32 digits
    write_csv_atomic(table, out_dir / "index.csv")
    return len(names)


def _write_rejected(out_dir: Path, rejected: list[dict], pred_dir: Path, n_kept: int) -> None:
    """rejected.csv (item, stage, reason); ValueError when no image is left."""
    path = out_dir / "rejected.csv"
    write_csv_atomic(pd.DataFrame(rejected, columns=["item", "stage", "reason"]), path)
    if not n_kept:
        raise ValueError(f"{pred_dir}: no image could be read ({len(rejected)} rejected: see {path})")


def extract_features(
    pred_dir: str | Path,
    out_dir: str | Path,
    prepared: str | Path | None = None,
    weights: str | Path = "imagenet",
    image_size: int = 224,
    batch_size: int = 16,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    shard: Shard | None = None,
    precision: str = "auto",
    max_pixels: int | None = None,
) -> dict:
    """Write features.npz / index.csv / features.json for one prediction set; returns the summary.

    ``prepared``: the prepared folder whose cache holds the images (None: the index's
    ``image_path`` column, as for new images). Resumable: rows already in ``out_dir/parts`` are
    reused when ``features.json`` records the same weights and image size; a different setting is
    refused (ValueError) rather than mixed. An image that fails is a ``rejected.csv`` row and
    the others go on; ValueError when none is left. ``shard``: that share's parts only
    (:mod:`dualstage.commands.shards`).
    ``precision``: auto | fp32 | bf16 of the DenseNet (:func:`dualstage.runtime.precision.inference_dtype`),
    recorded in features.json. ``max_pixels``: the pixel limit of a source image (default: the
    process's ``data.max_pixels``); one over it is a rejected row. Holds the feature set's lock and
    the prediction set's shared (:mod:`dualstage.core.locks`): never reads a set while it is written.
    """
    with (
        holding(pred_dir, "classify features", shared=True),
        holding(out_dir, "classify features", shared=shard is not None),
    ):
        return _extract_features(
            pred_dir,
            out_dir,
            prepared,
            weights,
            image_size,
            batch_size,
            workers,
            device,
            progress,
            shard,
            precision,
            limits.resolve(max_pixels),
        )


def _extract_features(
    pred_dir,
    out_dir,
    prepared,
    weights,
    image_size: int,
    batch_size: int,
    workers: int,
    device: str,
    progress: bool,
    shard: Shard | None,
    precision: str,
    max_pixels: int,
) -> dict:
    """:func:`extract_features` once both sets are locked."""
    t0 = time.perf_counter()
    pset, out_dir, dev = PredictionSet(pred_dir), Path(out_dir), pick_device(device)
    dtype = inference_dtype(precision, dev)
    index = _prediction_index(pset)
    if prepared is not None and not Path(prepared).is_dir():
        raise FileNotFoundError(f"prepared folder not found: {prepared}")
    prepared = Path(prepared).resolve() if prepared is not None else None
    cache_size = pick_cache_size(prepared, image_size) if prepared is not None else None
    sources, rejected = _sources(index, prepared, cache_size)
    setting = {
        **describe_weights(weights),
        "image_size": int(image_size),
        "version": _FEATURE_VERSION,
        "precision": precision_name(dtype),
    }
    record, parts = out_dir / "features.json", out_dir / "parts"
    _check_record(record, parts, setting)
    ids = index["image_id"].tolist()
    todo = [k for k, i in enumerate(ids) if sources[k] is not None and not (parts / f"{i}.npy").is_file()]
    todo = shard_rows(shard, sources, todo, batch_size)
    ctx = {
        "device": dev,
        "dtype": dtype,
        "parts": parts,
        "weights": weights,
        "record": record,
        "setting": setting,
        "pset": pset,
        "image_size": image_size,
        "batch_size": batch_size,
        "workers": workers,
        "progress": progress,
        "rejected": rejected,
        "max_pixels": max_pixels,
        "cache_root": prepared / "cache" if prepared else None,
    }
    run_seconds = _extract_rows(ctx, ids, sources, todo) if todo else 0.0
    bad = {r["item"] for r in rejected}
    if shard is not None:  # one share: dualstage.commands.shards records it; the merge writes the set's files
        n_now = sum(ids[k] not in bad for k in todo)
        return {"ids": [ids[k] for k in todo], "rejected_ids": sorted(bad), "extracted_now": n_now}
    kept = [i for i in ids if i not in bad and (parts / f"{i}.npy").is_file()]
    _write_rejected(out_dir, rejected, pset.folder, len(kept))
    n_features = _write_outputs(out_dir, index, kept)
    n_done = sum(ids[k] not in bad for k in todo)
    summary = {
        **setting,
        "status": "complete",
        "pred_dir": str(pset.folder.resolve()),
        "prepared": str(prepared) if prepared else None,
        "cache_size": cache_size,
        "images": len(kept),
        "rejected": len(rejected),
        "extracted_now": n_done,
        "reused": len(kept) - n_done,
        "n_features": n_features,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 2),
        "images_per_second": round(n_done / run_seconds, 2) if n_done and run_seconds > 0 else None,
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
    }
    write_json_atomic(record, summary)
    return summary

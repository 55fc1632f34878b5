"""``segment predict``: probability maps (uint8, each image's own grid) and truth histograms.

Output folder (one per prediction set: ``oof``, ``val``, ``test``, ``all`` or new images)::

    maps/<image_id>.png    q = round(p * 255), shape (H, W) of the source image
    hists/<image_id>.npy   (2, 256) int64 histogram of q outside / inside the true mask
    index.csv              image_id, split, fold_model, height, width, has_truth, has_pneumothorax,
                           true_area_px
    histograms.npz         all hists in one file, for the sweep (dualstage.gating.load_histograms)
    predict.json           models, checkpoints, TTA, timing

Which model predicts what: ``oof`` gives each train/val image the fold model that did not
train on it; ``val`` uses the ``main`` model (trained on train only); ``test``, ``all`` and
new images average every available model (fold ensemble, plus main). Resumable: finished
images are skipped. Reading (DataLoader workers) and writing (a thread pool) overlap with
compute, and at most a few batches of maps are in memory at any time.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dualstage import gating, rle
from dualstage.data.annotations import read_rle_csv
from dualstage.data.dataset import load_split_table
from dualstage.data.layouts import IMAGE_EXTS
from dualstage.data.prepare import image_shape, load_cached, read_image_file
from dualstage.io import atomic_write, write_csv_atomic, write_json_atomic
from dualstage.segment import models
from dualstage.segment.checkpoint import load_checkpoint
from dualstage.segment.distributed import pick_device
from dualstage.segment.precision import autocast_dtype

__all__ = ["predict", "LoadedModel", "find_models", "SPLITS"]

SPLITS = ("oof", "val", "test", "all")


@dataclass
class LoadedModel:
    """A fold model ready for inference."""

    name: str
    net: torch.nn.Module
    resolution: int
    mean: torch.Tensor
    std: torch.Tensor


def find_models(model_dir: str | Path) -> tuple[Path, dict[str, Path]]:
    """(experiment folder, {fold name: fold folder}) for an experiment or one fold folder."""
    model_dir = Path(model_dir)
    if (model_dir / "segmenter").is_dir():
        folds = {p.name: p for p in sorted((model_dir / "segmenter").iterdir()) if (p / "last.pt").exists()}
        if not folds:
            raise FileNotFoundError(
                f"{model_dir / 'segmenter'}: no trained fold (no */last.pt); run segment train"
            )
        return model_dir, folds
    if (model_dir / "last.pt").exists():
        return model_dir.parent.parent, {model_dir.name: model_dir}
    raise FileNotFoundError(
        f"--model {model_dir}: neither an experiment folder (segmenter/) nor a fold folder (last.pt)"
    )


def _load(fold_dir: Path, checkpoint: str, device: torch.device) -> list[LoadedModel]:
    names = {"best": ["best.pt"], "last": ["last.pt"], "both": ["best.pt", "last.pt"]}.get(checkpoint)
    if names is None:
        raise ValueError(f"--checkpoint {checkpoint!r}: expected best, last or both")
    out = []
    for name in names:
        path = fold_dir / name if (fold_dir / name).exists() else fold_dir / "last.pt"
        ckpt = load_checkpoint(path, map_location=device)
        net = models.build_model(ckpt["encoder"], "none", decoder_channels=ckpt.get("decoder_channels"))
        net.load_state_dict(ckpt["model"])
        net.to(device).eval()
        norm = ckpt["normalization"]
        phases = ckpt["experiment"]["train"]["phases"]
        out.append(
            LoadedModel(
                name=f"{fold_dir.name}/{path.stem}",
                net=net,
                resolution=int(phases[-1]["resolution"]),
                mean=torch.tensor(norm["mean"], device=device),
                std=torch.tensor(norm["std"], device=device),
            )
        )
    return out


class _CacheImages(Dataset):
    def __init__(self, prepared: Path, ids: list[str], size: int):
        self.prepared, self.ids, self.size = prepared, ids, size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image, _ = load_cached(self.prepared, self.size, self.ids[i])
        return torch.from_numpy(image.astype(np.float32) / 255.0)[None], i


class _FileImages(Dataset):
    """New radiographs (DICOM, PNG, JPEG) resized to the model's resolution."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image, _ = read_image_file(self.paths[i])
        small = Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR, reducing_gap=2.0)
        return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None], i


@torch.no_grad()
def _probabilities(group: list[LoadedModel], images: torch.Tensor, tta: bool, amp) -> torch.Tensor:
    """Mean sigmoid over models (and the horizontal flip), (N, 1, S, S) float32."""
    total = None
    n = 0
    for m in group:
        x = models.to_input(images, m.mean, m.std).contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(-1)] if tta else [x]
        for k, v in enumerate(views):
            with amp():
                p = torch.sigmoid(m.net(v).float())
            p = p.flip(-1) if k == 1 else p
            total = p if total is None else total + p
            n += 1
    return total / n


def _write(out: Path, image_id: str, q: np.ndarray, truth: np.ndarray | None) -> None:
    atomic_write(out / "maps" / f"{image_id}.png", lambda tmp: Image.fromarray(q).save(tmp, format="PNG"))
    if truth is not None:
        hist = gating.histogram(q, truth)
        atomic_write(out / "hists" / f"{image_id}.npy", lambda tmp: _save_npy(tmp, hist))


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to a bare path
        np.save(fh, array)


def _jobs_for_split(
    split: str, exp_dir: Path, folds: dict[str, Path]
) -> tuple[pd.DataFrame, list[tuple[list[str], list[str]]]]:
    """(table of images, [(fold names, image ids)]) for a split mode."""
    table = load_split_table(exp_dir / "prepared")
    every = list(folds)
    if split == "oof":
        fold_models = [f for f in folds if f.startswith("fold_")]
        if not fold_models:
            raise ValueError(f"--split oof needs fold models (segment train --fold all); found {every}")
        groups = []
        for name in fold_models:
            k = int(name.removeprefix("fold_"))
            ids = table.loc[(table.split != "test") & (table.fold == k), "image_id"].tolist()
            groups.append(([name], ids))
        return table, groups
    if split == "val":
        if "main" not in folds:
            raise ValueError(
                f"--split val needs the main model (segment train --fold main); found {every}. "
                "Use --split oof for fold models."
            )
        return table, [(["main"], table.loc[table.split == "val", "image_id"].tolist())]
    if split == "test":
        return table, [(every, table.loc[table.split == "test", "image_id"].tolist())]
    if split == "all":
        return table, [(every, table["image_id"].tolist())]
    raise ValueError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")


def predict(
    model_dir: str | Path,
    out: str | Path,
    split: str | None = None,
    input_dir: str | Path | None = None,
    tta: bool = False,
    checkpoint: str = "best",
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    progress: bool = True,
    only: list[str] | None = None,
) -> dict:
    """Predict a split of the experiment's prepared data, or a folder of new images.

    ``only`` restricts the models used (e.g. ``["fold_3"]`` for that fold's own test score).
    """
    if (split is None) == (input_dir is None):
        raise ValueError("give exactly one of --split and --input")
    t0 = time.perf_counter()
    dev = pick_device(device)
    exp_dir, folds = find_models(model_dir)
    if only:
        unknown = sorted(set(only) - set(folds))
        if unknown:
            raise ValueError(f"--folds {unknown}: not trained; available: {sorted(folds)}")
        folds = {k: v for k, v in folds.items() if k in only}
    config = json.loads((next(iter(folds.values())) / "config.json").read_text())
    amp_dtype = autocast_dtype(config["train"]["amp"], dev)

    def amp():
        return torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    out = Path(out)
    loaded = {name: _load(path, checkpoint, dev) for name, path in folds.items()}
    if input_dir is not None:
        paths = sorted(p for p in Path(input_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise FileNotFoundError(f"--input {input_dir}: no DICOM/PNG/JPEG images found")
        stems: dict[str, Path] = {}
        for p in paths:
            if p.stem in stems:
                raise ValueError(f"--input: two images share the id {p.stem!r}: {stems[p.stem]} and {p}")
            stems[p.stem] = p
        sizes, rejected = {}, []
        for p in paths:  # headers only: pixels are read once, below
            try:
                sizes[p.stem] = image_shape(p)
            except ValueError as exc:  # an unreadable file is reported, the others are predicted
                rejected.append({"item": str(p), "reason": str(exc)})
        write_csv_atomic(pd.DataFrame(rejected, columns=["item", "reason"]), out / "rejected.csv")
        paths = [p for p in paths if p.stem in sizes]
        if not paths:
            raise ValueError(
                f"--input {input_dir}: no readable image ({len(rejected)} rejected: {out / 'rejected.csv'})"
            )
        table = pd.DataFrame(
            {
                "image_path": [str(p.resolve()) for p in paths],
                "image_id": [p.stem for p in paths],
                "split": "input",
                "height": [sizes[p.stem][0] for p in paths],
                "width": [sizes[p.stem][1] for p in paths],
            }
        )
        groups = [(list(folds), table["image_id"].tolist())]
        truth_rle: dict[str, str] = {}
        path_of = {p.stem: p for p in paths}
    else:
        table, groups = _jobs_for_split(split, exp_dir, folds)
        truth = read_rle_csv(exp_dir / "prepared" / "masks.csv")
        truth_rle = dict(zip(truth["image_id"], truth["rle"], strict=True))
    info = table.set_index("image_id")
    rows, done_now = [], 0
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for fold_names, ids in groups:
            group = [m for name in fold_names for m in loaded[name]]
            size = group[0].resolution
            for id_ in ids:
                rows.append({"image_id": id_, "fold_model": "+".join(fold_names)})
            todo = [
                i
                for i in ids
                if not (out / "maps" / f"{i}.png").exists()
                or (i in truth_rle and not (out / "hists" / f"{i}.npy").exists())
            ]
            if not todo:
                continue
            dataset = (
                _FileImages([path_of[i] for i in todo], size)
                if input_dir
                else _CacheImages(exp_dir / "prepared", todo, size)
            )
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
            bar = tqdm(
                loader,
                desc=f"predict {split or 'input'} [{'+'.join(fold_names)}]",
                unit="batch",
                disable=not progress,
            )
            for images, idx in bar:
                probs = _probabilities(group, images.to(dev), tta, amp)
                for p, i in zip(probs, idx.tolist(), strict=True):
                    id_ = todo[i]
                    h, w = int(info.loc[id_, "height"]), int(info.loc[id_, "width"])
                    full = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                    q = torch.round(full.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
                    mask = (
                        np.ascontiguousarray(rle.decode(truth_rle[id_], h, w)) if id_ in truth_rle else None
                    )
                    pending.append(pool.submit(_write, out, id_, q, mask))
                    done_now += 1
                while len(pending) > 4 * batch_size:  # bound the maps waiting in memory
                    pending.pop(0).result()
        for job in pending:
            job.result()
    index = pd.DataFrame(rows).merge(table, on="image_id", how="left")
    index["has_truth"] = index["image_id"].isin(truth_rle).astype(int)
    index["true_area_px"] = index.get("mask_area_px", pd.Series(np.nan, index=index.index))
    index["has_pneumothorax"] = (index["true_area_px"].fillna(0) > 0).astype(int)
    cols = [
        "image_id",
        "split",
        "fold_model",
        "height",
        "width",
        "has_truth",
        "has_pneumothorax",
        "true_area_px",
    ]
    if "image_path" in index:  # new images: stage two reads them from their source
        cols.append("image_path")
    write_csv_atomic(index[cols], out / "index.csv")
    known = index[index.has_truth == 1]
    if len(known):
        hist = np.stack([np.load(out / "hists" / f"{i}.npy") for i in known["image_id"]])
        gating.write_histograms(
            out / "histograms.npz",
            known["image_id"].to_numpy(),
            hist,
            known["height"].to_numpy(),
            known["width"].to_numpy(),
        )
    seconds = time.perf_counter() - t0
    summary = {
        "set": split or "input",
        "images": len(index),
        "predicted_now": done_now,
        "seconds": round(seconds, 2),
        "images_per_second": round(done_now / seconds, 2) if done_now else None,
        "tta": tta,
        "checkpoint": checkpoint,
        "models": {k: [m.name for m in v] for k, v in loaded.items()},
        "device": str(dev),
    }
    write_json_atomic(out / "predict.json", summary)
    return summary

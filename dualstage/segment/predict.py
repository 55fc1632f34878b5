"""``segment predict``: probability maps (uint8, each image's own grid) and truth histograms.

Writes one :class:`~dualstage.artifacts.prediction_set.PredictionSet` (``oof``, ``val``, ``test``,
``all`` or new images). Which model predicts what: ``oof`` gives every study the fold model that
did not train on it (cross-fitting: the folds cover every study); ``val`` uses the ``main``
model (trained on train only);
``test``, ``all`` and new images average every selected model (``--folds`` restricts them, e.g.
``fold_3`` alone for that fold's own test score). Resumable: finished images are skipped.
Reading (DataLoader workers) and writing (a thread pool) overlap with compute, and at most a
few batches of maps are in memory at any time. A new image that cannot be read or decoded is a
``rejected.csv`` row (file, stage, reason); the others are predicted. ``strict=True`` (``--strict``)
stops at the first such file instead, with a one-line ValueError naming it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.prediction_set import SPLITS, PredictionSet
from dualstage.artifacts.shard_records import Shard, shard_jobs
from dualstage.core import rle
from dualstage.core.locks import holding
from dualstage.core.progress import progress as progress_iter
from dualstage.data import limits
from dualstage.data.annotations import read_rle_csv
from dualstage.data.cache import load_cached_image
from dualstage.data.dataset import load_split_table
from dualstage.data.ids import check_image_id
from dualstage.data.images import find_images, image_id_of, image_shape, read_image_file
from dualstage.runtime.distributed import pick_device
from dualstage.runtime.precision import inference_dtype, precision_name
from dualstage.segment.inference import (
    LoadedModel,
    autocast_context,
    load_models,
    probabilities,
    select_models,
)

__all__ = [
    "predict",
    "refuse_seen",
    "seen_studies",
    "maps_on_grids",
]

Jobs = list[tuple[list[str], list[str]]]  # [(model names, image ids)]


class _CacheImages(Dataset):
    """Images of a prepared folder's cache at the model's resolution."""

    def __init__(self, prepared: Path, ids: list[str], size: int):
        self.prepared, self.ids, self.size = prepared, ids, size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image = load_cached_image(self.prepared, self.size, self.ids[i])
        return torch.from_numpy(image.astype(np.float32) / 255.0)[None], i, ""


class _FileImages(Dataset):
    """New radiographs (DICOM, PNG, JPEG) resized to the model's resolution; a failure is a reason.

    Each is held to the pixel limit ``max_pixels`` before it is decoded (:mod:`dualstage.data.limits`)."""

    def __init__(self, paths: list[Path], size: int, max_pixels: int):
        self.paths, self.size, self.max_pixels = paths, size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image, _ = read_image_file(self.paths[i], self.max_pixels)
            small = Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR, reducing_gap=2.0)
            return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None], i, ""
        except Exception as exc:  # noqa: BLE001 - any decoder failure rejects this file only
            named = isinstance(exc, ValueError) and str(exc).startswith(str(self.paths[i]))  # our one-liners
            reason = (str(exc) if named else f"{type(exc).__name__}: {exc}").splitlines()[0][:300]
            return torch.zeros((1, self.size, self.size)), i, reason


def strict_error(row: dict) -> ValueError:
    """The ``--strict`` error of a rejected row {item, stage, reason}: one line naming the file."""
    item, reason = str(row["item"]), " ".join(str(row["reason"]).split())
    reason = reason.replace(f"{item}: ", "", 1)
    return ValueError(f"{item}: rejected at the {row['stage']} stage ({reason}); --strict stops here")


def split_jobs(
    split: str, exp: ExperimentDir, models: list[str], prepared: Path | None = None
) -> tuple[pd.DataFrame, Jobs]:
    """(table of images, [(model names, image ids)]) for a split of the prepared data (``prepared``:
    another prepared folder than the experiment's, e.g. an external set; ``all`` only)."""
    if prepared is not None and split != "all":
        raise ValueError(f"another prepared folder ({prepared}) is predicted whole: --split all, not {split}")
    table = load_split_table(prepared or exp.prepared)
    if split == "oof":
        fold_models = [f for f in models if f.startswith("fold_")]
        if not fold_models:
            raise ValueError(f"--split oof needs fold models (segment train --fold all); found {models}")
        groups = []
        for name in fold_models:
            k = int(name.removeprefix("fold_"))
            groups.append(
                ([name], table.loc[table.fold == k, "image_id"].tolist())  # every study, once
            )
        return table, groups
    if split == "val":
        if "main" not in models:
            raise ValueError(
                f"--split val needs the main model (segment train --fold main); found {models}. "
                "Use --split oof for fold models."
            )
        return table, [(["main"], table.loc[table.split == "val", "image_id"].tolist())]
    if split == "test":
        ids = table.loc[table.split == "test", "image_id"].tolist()
        refuse_seen(exp, models, ids, "--split test")
        return table, [(list(models), ids)]
    if split == "all":
        return table, [(list(models), table["image_id"].tolist())]
    raise ValueError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")


def seen_studies(exp: ExperimentDir, model: str, ids: list[str]) -> int:
    """How many of ``ids`` model ``model`` trained on or chose its epoch on (its ``split.json``)."""
    path = exp.segmenter / model / "split.json"
    if not path.is_file():
        return 0
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable split record ({exc})") from None
    seen = set(map(str, record.get("train", []))) | set(map(str, record.get("validation", [])))
    return len(seen.intersection(ids))


def refuse_seen(exp: ExperimentDir, models: list[str], ids: list[str], what: str) -> None:
    """ValueError naming each model that trained (or chose its epoch) on any of ``ids``: a score of
    such maps is not a holdout number."""
    seen = {m: n for m in models if (n := seen_studies(exp, m, ids))}
    if seen:
        names = ", ".join(f"{m} saw {n} of the {len(ids)} studies" for m, n in seen.items())
        raise ValueError(
            f"{what}: {names} (trained or chose its epoch on them), so its maps would give a leaky "
            "number; use --split oof (every study by the fold model that never saw it) or --folds with "
            "models that never saw these studies (e.g. main)"
        )


def input_jobs(
    input_dir: str | Path | Sequence[str | Path],
    models: list[str],
    rejected: list[dict],
    max_pixels: int | None = None,
) -> tuple[pd.DataFrame, Jobs, dict[str, Path]]:
    """(table, jobs, {image id: path}) for new images (files or folders, see :func:`find_images`);
    bad ids, unreadable headers, and images over the pixel limit ``max_pixels`` (default: the
    process's) or shorter than declared go to ``rejected``."""
    path_of: dict[str, Path] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for p in find_images(input_dir):
        image_id = image_id_of(p)
        try:
            check_image_id(image_id)
        except ValueError as exc:
            rejected.append({"item": str(p), "stage": "id", "reason": str(exc)})
            continue
        if image_id in path_of:
            rejected.append(
                {"item": str(p), "stage": "id", "reason": f"id {image_id!r} also used by {path_of[image_id]}"}
            )
            continue
        try:
            sizes[image_id] = image_shape(p, max_pixels)  # headers only: pixels are read once, in the loader
            path_of[image_id] = p
        except (ValueError, OSError) as exc:
            rejected.append({"item": str(p), "stage": "header", "reason": str(exc).splitlines()[0]})
    ids = list(path_of)
    table = pd.DataFrame(
        {
            "image_path": [str(path_of[i].resolve()) for i in ids],
            "image_id": ids,
            "split": "input",
            "height": [sizes[i][0] for i in ids],
            "width": [sizes[i][1] for i in ids],
        }
    )
    return table, [(list(models), ids)], path_of


def _dataset(todo: list[str], size: int, ctx: dict) -> Dataset:
    if ctx["path_of"] is not None:
        return _FileImages([ctx["path_of"][i] for i in todo], size, ctx["max_pixels"])
    return _CacheImages(ctx["prepared"], todo, size)


def _to_grid(p: torch.Tensor, h: int, w: int) -> np.ndarray:
    """(N, 1, S, S) probabilities -> (N, h, w) uint8 q = round(p * 255) on the images' own grid.

    One bilinear resize for the batch and in-place arithmetic: the same values as per image."""
    full = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return full.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy()


def maps_on_grids(probs: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """(N, 1, S, S) probabilities and each image's (h, w) -> N uint8 maps; same-size images together."""
    out: list = [None] * len(sizes)
    for size in dict.fromkeys(sizes):
        rows = [k for k, s in enumerate(sizes) if s == size]
        for k, q in zip(rows, _to_grid(probs[rows], *size), strict=True):
            out[k] = q
    return out


def _run_group(ctx: dict, group: list[LoadedModel], todo: list[str], desc: str) -> int:
    """Predict ``todo`` with one model group, handing maps to the writer pool; returns how many."""
    pset, info, truth_rle, pool, pending = ctx["pset"], ctx["info"], ctx["truth"], ctx["pool"], ctx["pending"]
    dataset = _dataset(todo, group[0].resolution, ctx)
    loader = DataLoader(dataset, batch_size=ctx["batch_size"], num_workers=ctx["workers"], shuffle=False)
    done = 0
    for images, idx, reasons in progress_iter(loader, desc=desc, unit="batch", enabled=ctx["progress"]):
        probs = probabilities(group, images.to(ctx["device"]), ctx["tta"], ctx["amp"])
        ids = [todo[i] for i in idx.tolist()]
        ok = [k for k, reason in enumerate(reasons) if not reason]  # no map for a file that failed
        sizes = [(int(info.at[i, "height"]), int(info.at[i, "width"])) for i in ids]
        maps = dict(zip(ok, maps_on_grids(probs[ok], [sizes[k] for k in ok]), strict=True)) if ok else {}
        for k, (id_, (h, w), reason) in enumerate(zip(ids, sizes, reasons, strict=True)):
            if reason:
                row = {"item": str(ctx["path_of"][id_]), "stage": "decode", "reason": reason}
                if ctx["strict"]:
                    raise strict_error(row)
                ctx["rejected"].append(row)
                ctx["failed"].add(id_)
                continue
            mask = np.ascontiguousarray(rle.decode(truth_rle[id_], h, w)) if id_ in truth_rle else None
            pending.append(pool.submit(pset.write_image, id_, maps.pop(k), mask))
            done += 1
        while len(pending) > 4 * ctx["batch_size"]:  # bound the maps waiting in memory
            pending.pop(0).result()
    return done


def _index(rows: list[dict], table: pd.DataFrame, truth_rle: dict) -> pd.DataFrame:
    index = pd.DataFrame(rows, columns=["image_id", "fold_model"]).merge(table, on="image_id", how="left")
    index["has_truth"] = index["image_id"].isin(truth_rle).astype(int)
    index["true_area_px"] = index.get("mask_area_px", pd.Series(np.nan, index=index.index))
    index["has_pneumothorax"] = (index["true_area_px"].fillna(0) > 0).astype(int)
    return index


def _setup(
    exp: ExperimentDir,
    loaded: dict,
    split: str | None,
    input_dir,
    strict: bool,
    max_pixels: int,
    prepared: str | Path | None = None,
) -> dict:
    """The run's image table, model groups, rejected rows and truth (everything but the models);
    ``prepared``: another prepared folder than the experiment's (e.g. an annotated external set)."""
    rejected: list[dict] = []
    path_of, truth_rle = None, {}
    if input_dir is not None:
        table, groups, path_of = input_jobs(input_dir, list(loaded), rejected, max_pixels)
        if strict and rejected:
            raise strict_error(rejected[0])
    else:
        table, groups = split_jobs(split, exp, list(loaded), Path(prepared) if prepared else None)
        truth = read_rle_csv(Path(prepared or exp.prepared) / "masks.csv")
        truth_rle = dict(zip(truth["image_id"], truth["rle"], strict=True))
    return {
        "table": table,
        "groups": groups,
        "rejected": rejected,
        "path_of": path_of,
        "truth": truth_rle,
        "prepared": prepared or exp.prepared,
    }


def _predict_groups(ctx: dict, loaded: dict, shard: Shard | None, label: str) -> tuple[list[dict], int]:
    """Predict every model group's images not done yet: (index rows, how many predicted now)."""
    rows, done_now, pset = [], 0, ctx["pset"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        ctx["pool"], ctx["pending"] = pool, []
        for names, ids in shard_jobs(ctx["groups"], shard, ctx["batch_size"]):
            rows += [{"image_id": i, "fold_model": "+".join(names)} for i in ids]
            todo = [i for i in ids if not pset.is_done(i, i in ctx["truth"])]
            if todo:
                group = [m for name in names for m in loaded[name]]
                done_now += _run_group(ctx, group, todo, f"predict {label} [{'+'.join(names)}]")
        for job in ctx["pending"]:
            job.result()
    return [r for r in rows if r["image_id"] not in ctx["failed"]], done_now


def predict(
    exp_dir: str | Path,
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
    strict: bool = False,
    shard: Shard | None = None,
    precision: str = "auto",
    max_pixels: int | None = None,
    prepared: str | Path | None = None,
) -> dict:
    """Predict a split of the prepared data (``prepared``: another prepared folder, e.g. an annotated
    external set, ``split="all"``), or a folder of new images (unreadable ones, and ones over
    the pixel limit ``max_pixels`` (default: the process's ``data.max_pixels``): ``rejected.csv`` rows,
    or with ``strict`` a ValueError naming the first); ``shard``: that share only, no set files
    (:mod:`dualstage.commands.shards`); ``precision``: auto | fp32 | bf16, recorded in predict.json.
    Holds the set's lock (:mod:`dualstage.core.locks`; shared among shards) for the run."""
    if (split is None) == (input_dir is None):
        raise ValueError("give exactly one of --split and --input")
    with holding(out, "segment predict", shared=shard is not None):
        t0 = time.perf_counter()
        exp, dev, pset = ExperimentDir(exp_dir), pick_device(device), PredictionSet(out)
        dtype = inference_dtype(precision, dev)  # an unknown choice fails before models load
        loaded = load_models(select_models(exp, only), checkpoint, dev)
        ctx = _setup(exp, loaded, split, input_dir, strict, limits.resolve(max_pixels), prepared)
        ctx.update(
            exp=exp,
            pset=pset,
            info=ctx["table"].set_index("image_id"),
            batch_size=batch_size,
            workers=workers,
            device=dev,
            tta=tta,
            progress=progress,
            amp=autocast_context(dtype, dev),
            failed=set(),
            strict=strict,
            max_pixels=limits.resolve(max_pixels),
        )
        rows, done_now = _predict_groups(ctx, loaded, shard, split or "input")
        if shard is not None:  # one share: the shards command records it; the merge writes the files
            return {"rows": rows, "failed": sorted(ctx["failed"]), "predicted_now": done_now}
        rejected = ctx["rejected"]
        if input_dir is not None:
            pset.write_rejected(rejected)
            if not rows:
                raise ValueError(
                    f"--input {input_dir}: no readable image ({len(rejected)} rejected: {pset.rejected_path})"
                )
        pset.write_index(_index(rows, ctx["table"], ctx["truth"]))
        seconds = time.perf_counter() - t0
        summary = {
            "set": split or "input",
            "images": len(rows),
            "predicted_now": done_now,
            "rejected": len(rejected),
            "seconds": round(seconds, 2),
            "images_per_second": round(done_now / seconds, 2) if done_now else None,
            "tta": tta,
            "checkpoint": checkpoint,
            "models": {k: [m.name for m in v] for k, v in loaded.items()},
            "device": str(dev),
            "precision": precision_name(dtype),
            "channels_last": True,
        }
        pset.write_info(summary)
        return summary

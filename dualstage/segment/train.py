"""``segment train``: the curriculum loop (phases of resolution / unfreezing / loss / LR schedule).

One run trains one fold model into ``models/<exp>/segmenter/<fold>/``:

    last.pt            resumable checkpoint (atomic): weights, optimiser, RNG, position
    best.pt            inference checkpoint (weights + what predict needs) of the epoch with the
                       highest validation mean Dice under the challenge rule at
                       ``train.val_threshold``
    log.csv            one row per epoch: phase, epoch, lr, losses, validation Dice, seconds
    config.json        the resolved experiment; versions.json: library versions
    done.json          written when the curriculum finished (a re-run then skips)

Folds: ``main`` trains on the train split and validates on val (the progressive paper's
primary split); ``K`` trains on train+val minus fold K and validates on fold K (its
models give the out-of-fold maps stage two learns from).

This module sets a run up (config checks, folds, output folder, resume); the epochs run in
:class:`dualstage.segment.loop.Trainer`.
"""

from __future__ import annotations

import platform
import random
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dualstage.config import PAPER_VAL_FRACTION, Experiment, to_dict
from dualstage.core import metrics
from dualstage.core.io import clean_stale_tmp, write_json_atomic
from dualstage.data.cache import cached_sizes
from dualstage.data.dataset import load_split_table
from dualstage.data.splits import inner_split
from dualstage.runtime.distributed import Runtime, setup_runtime, teardown
from dualstage.runtime.precision import autocast_dtype
from dualstage.segment import losses, models
from dualstage.segment.loop import SCHEDULES, FoldData, Trainer

__all__ = [
    "train",
    "fold_ids",
    "fold_names",
    "fold_data",
    "check_phases",
    "autocast_dtype",
    "library_versions",
    "SCHEDULES",
]


def library_versions() -> dict:
    """Versions of the libraries a result depends on."""
    import albumentations  # heavy, and it checks for updates at import: loaded when augmenting
    import segmentation_models_pytorch as smp  # heavy (timm): loaded when a model is built

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "smp": smp.__version__,
        "albumentations": albumentations.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def fold_names(fold: str, table: pd.DataFrame) -> list[str]:
    """``main`` | ``K`` | ``all`` (every fold id of splits.csv) -> folder names."""
    folds = sorted(int(f) for f in table["fold"].unique() if f >= 0)
    if fold == "main":
        return ["main"]
    if fold == "all":
        return [f"fold_{k}" for k in folds]
    if str(fold).isdigit() and int(fold) in folds:
        return [f"fold_{int(fold)}"]
    raise ValueError(f"--fold {fold!r}: expected main, all or one of {folds}")


def fold_ids(table: pd.DataFrame, name: str, exp: Experiment | None = None) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of a model: ``main`` trains on train and validates on val (the
    holdout view); ``fold_K`` trains on every study outside fold K and validates on an inner share of
    those (``inner_split``), never on fold K, whose out-of-fold maps stage two learns from."""
    if name == "main":
        return table.loc[table.split == "train", "image_id"].tolist(), table.loc[
            table.split == "val", "image_id"
        ].tolist()
    k = int(name.removeprefix("fold_"))
    fraction = exp.data.val_fraction if exp is not None else PAPER_VAL_FRACTION
    seed = exp.data.split_seed if exp is not None else 0
    return inner_split(table, k, fraction, seed)


def check_phases(exp: Experiment, prepared: Path) -> None:
    """ValueError naming the phase and key unless every phase can run on the prepared cache."""
    phases = exp.train.phases
    if not phases:
        raise ValueError(f"experiment {exp.name}: train.phases is empty")
    sizes = cached_sizes(prepared)
    if not sizes:
        raise ValueError(
            f"experiment {exp.name}: nothing prepared in {prepared}; run `python -m dualstage.segment "
            "prepare --exp <experiment>` (or `python -m dualstage run <experiment> --steps data`) first"
        )
    for i, ph in enumerate(phases):
        where = f"experiment {exp.name}: train.phases[{i}]"
        if ph.schedule not in SCHEDULES:
            raise ValueError(f"{where}: schedule {ph.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if ph.unfreeze not in models.UNFREEZE_PHASES:
            raise ValueError(f"{where}: unfreeze {ph.unfreeze!r}; valid: {', '.join(models.UNFREEZE_PHASES)}")
        if ph.resolution not in sizes:
            raise ValueError(f"{where}: resolution {ph.resolution} is not in the prepared cache {sizes}")
        models.check_size(exp.model.encoder, ph.resolution)
        losses.build_loss(ph.loss)  # unknown names fail before any training


def seed_model(seed: int, name: str) -> int:
    """Seed python, numpy and torch for model ``name`` (main, fold_K) from ``train.seed``; returns it.

    Each model starts from its own seed, so fold_2 trains the same whether fold_0 and fold_1 ran
    before it in this process or not (a resumed run restores the saved RNG state instead).
    """
    value = (int(seed) + zlib.crc32(name.encode())) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value


def fold_data(exp: Experiment, table: pd.DataFrame, fold: str) -> FoldData:
    """Training / validation ids (capped by ``train.max_*_images``) and training labels of a fold."""
    train_ids, val_ids = fold_ids(table, fold, exp)
    if exp.train.max_train_images:
        train_ids = train_ids[: exp.train.max_train_images]
    if exp.train.max_val_images:
        val_ids = val_ids[: exp.train.max_val_images]
    if not train_ids or not val_ids:
        raise ValueError(f"fold {fold}: {len(train_ids)} training and {len(val_ids)} validation images")
    labels = table.set_index("image_id")["has_pneumothorax"]
    return FoldData(train_ids, val_ids, labels.loc[train_ids].to_numpy())


def _train_fold(
    exp: Experiment,
    name: str,
    table: pd.DataFrame,
    runtime: Runtime,
    resume: bool,
    stop_after: int | None,
    progress: bool,
) -> dict:
    """Train (or resume, or skip when done) one fold folder; its summary."""
    prepared, out = exp.folder / "prepared", exp.folder / "segmenter" / name
    if (out / "done.json").exists():
        if runtime.is_main:
            print(f"[train] {name}: finished already ({out / 'done.json'})")
        return {"fold": name, "skipped": True}
    if (out / "last.pt").exists() and not resume:
        raise RuntimeError(f"{out / 'last.pt'} exists: pass --resume to continue it, or delete {out}")
    out.mkdir(parents=True, exist_ok=True)
    if runtime.is_main:
        clean_stale_tmp(out)  # a save killed mid-write left .last.pt.*.tmp
    seed_model(exp.train.seed, name)  # each model from its own seed, whatever ran before it
    data = fold_data(exp, table, name)
    if runtime.is_main:  # what the model saw: training ids and the ids its epoch choice was made on
        write_json_atomic(out / "split.json", {"train": data.train_ids, "validation": data.val_ids})
    trainer = Trainer(exp, name, data, prepared, out, runtime, progress)
    if resume and (out / "last.pt").exists():
        trainer.resume()
    elif runtime.is_main:
        write_json_atomic(out / "config.json", to_dict(exp))
        write_json_atomic(out / "versions.json", library_versions())
    t0 = time.perf_counter()
    result = trainer.run(stop_after=stop_after)
    result.update(fold=name, seconds=round(time.perf_counter() - t0, 1), world=runtime.world)
    if not result["stopped"] and runtime.is_main:
        result["collapse"] = collapse_on_validation(out / "log.csv", exp.train.checkpoint)
        if result["collapse"]["collapsed"]:
            print(f"[train] WARNING: {name} collapsed: {result['collapse']['why']}", flush=True)
        write_json_atomic(out / "done.json", result)
    return result


def collapse_on_validation(log_csv: Path, checkpoint: str) -> dict:
    """The collapse check of a finished model on its inner validation at the kept epoch (the last,
    or the best validation Dice's): {epoch, pos_dice, neg_dice, collapsed, why}."""
    log = pd.read_csv(log_csv)
    row = log.iloc[-1] if checkpoint == "last" else log.loc[log["val_mean_dice"].idxmax()]
    pos, neg = float(row["val_pos_dice"]), float(row["val_neg_dice"])
    bad = metrics.collapsed_on_validation(pos, neg)
    epoch = int(row["epoch"])
    why = f"validation positive-case Dice {pos:.3f}, negative-case {neg:.3f} at kept epoch {epoch}"
    return {"epoch": epoch, "pos_dice": pos, "neg_dice": neg, "collapsed": bad, "why": why if bad else ""}


def train(
    exp: Experiment,
    fold: str = "main",
    resume: bool = False,
    stop_after: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> list[dict]:
    """Train the fold model(s) of an experiment; returns one summary per fold.

    ``stop_after`` ends this invocation after that many epochs (a checkpoint is written),
    as a preempted job would; ``resume`` continues from ``last.pt`` exactly (same phase,
    epoch, LR, sampler order and RNG state).
    """
    prepared = exp.folder / "prepared"
    runtime = setup_runtime(device)
    try:
        check_phases(exp, prepared)
        table = load_split_table(prepared)
        results = []
        for name in fold_names(str(fold), table):
            results.append(_train_fold(exp, name, table, runtime, resume, stop_after, progress))
            if results[-1].get("stopped"):
                break
        return results
    finally:
        teardown()

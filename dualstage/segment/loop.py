"""The training loop of one fold: phases of the curriculum, epochs, validation and checkpoints.

:class:`Trainer` is built and driven by :func:`dualstage.segment.train.train`. Per epoch it
writes ``last.pt`` (resumable: weights, optimiser, scheduler, scaler, RNG state, position, log),
``best.pt`` when the validation Dice improved (inference only: weights and what predict needs,
see :func:`dualstage.segment.checkpoint.inference_checkpoint`) and ``log.csv``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dualstage.config import Experiment, PhaseConfig, to_dict
from dualstage.core import metrics
from dualstage.core.io import write_csv_atomic
from dualstage.core.progress import progress as progress_iter
from dualstage.core.progress import progress_write
from dualstage.data.dataset import CachedDataset, EpochSampler, build_augment
from dualstage.runtime.distributed import Runtime, all_gather_objects
from dualstage.runtime.precision import autocast, autocast_dtype
from dualstage.segment import losses, models, schedule
from dualstage.segment.checkpoint import (
    FORMAT,
    inference_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)

__all__ = ["Trainer", "FoldData", "batch_size_for", "make_scheduler", "SCHEDULES", "LOG_COLUMNS"]

SCHEDULES = ("cyclic", "plateau", "constant")
LOG_COLUMNS = [
    "phase",
    "phase_name",
    "epoch",
    "epoch_in_phase",
    "resolution",
    "unfreeze",
    "loss",
    "lr",
    "train_loss",
    "val_loss",
    "val_mean_dice",
    "val_pos_dice",
    "val_neg_dice",
    "val_pos_accuracy",
    "seconds",
]


@dataclass
class FoldData:
    """Image ids of one fold: training (with labels (N,) 0/1) and validation."""

    train_ids: list[str]
    val_ids: list[str]
    train_labels: np.ndarray


def batch_size_for(exp: Experiment, phase: PhaseConfig) -> int:
    """The phase's own batch size, else ``train.batch_size[resolution]``."""
    if phase.batch_size:
        return phase.batch_size
    table = {int(k): int(v) for k, v in exp.train.batch_size.items()}
    if phase.resolution not in table:
        raise ValueError(
            f"no batch size for resolution {phase.resolution}: set train.batch_size[{phase.resolution}]"
        )
    return table[phase.resolution]


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}  # train.optimizer (config checks keys)


def make_scheduler(phase: PhaseConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The phase's LR schedule (cyclic, plateau) or None (constant: LR set to ``base_lr``)."""
    if phase.schedule == "cyclic":
        cycle = schedule.cycle_steps_for(steps_per_epoch, phase.cycle_epochs or phase.epochs)
        return schedule.make_cyclic(optimizer, phase.base_lr, phase.max_lr, cycle)
    for group in optimizer.param_groups:
        group["lr"] = phase.base_lr
    if phase.schedule == "plateau":
        return schedule.make_plateau(optimizer, factor=phase.plateau_factor, patience=phase.plateau_patience)
    return None


@dataclass
class _Phase:
    """What one curriculum phase trains with (rebuilt at each phase start and on resume)."""

    config: PhaseConfig
    model: torch.nn.Module  # the bare model, or its DDP wrapper
    loss_fn: torch.nn.Module
    dataset: CachedDataset
    sampler: EpochSampler
    loader: DataLoader
    scheduler: object
    early: schedule.EarlyStopping | None


class Trainer:
    """One fold's model, optimiser and curriculum position; :meth:`run` trains it."""

    def __init__(
        self,
        exp: Experiment,
        fold: str,
        data: FoldData,
        prepared: Path,
        out: Path,
        runtime: Runtime,
        progress: bool,
    ):
        self.exp, self.fold, self.data, self.prepared, self.out = exp, fold, data, prepared, out
        self.rt = runtime
        self.progress = progress and runtime.is_main
        cfg = exp.train
        self.augment = build_augment(cfg.augment)
        stats = None
        if exp.model.normalization == "dataset":
            stats = json.loads((prepared / "stats.json").read_text())
        mean, std = models.normalization(exp.model.normalization, stats)
        self.mean = torch.tensor(mean, device=runtime.device)
        self.std = torch.tensor(std, device=runtime.device)
        self.model = models.build_model(
            exp.model.encoder, exp.model.weights, decoder_channels=exp.model.decoder_channels
        ).to(runtime.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = OPTIMIZERS[cfg.optimizer](
            self.model.parameters(), lr=exp.train.phases[0].base_lr, weight_decay=cfg.weight_decay
        )
        self.amp_dtype = autocast_dtype(cfg.amp, runtime.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = {
            "phase": 0,
            "epoch_in_phase": 0,
            "epoch": 0,
            "step": 0,
            "best_dice": -1.0,
            "early": None,
        }
        self.log_rows: list[dict] = []
        self.scheduler_state = None

    # -- checkpoints -----------------------------------------------------------------
    def payload(self, scheduler, early, resolution: int, val_dice: float) -> dict:
        """The resumable checkpoint: weights and metadata, then optimiser, RNG and position."""
        channels = self.exp.model.decoder_channels
        return {
            "format": FORMAT,
            "kind": "resumable",
            "model": unwrap(self.model).state_dict(),
            "encoder": self.exp.model.encoder,
            "decoder_channels": [int(c) for c in channels] if channels else None,
            "normalization": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()},
            "resolution": int(resolution),
            "experiment": to_dict(self.exp),
            "fold": self.fold,
            "epoch": int(self.state["epoch"]),
            "val_mean_dice": float(val_dice),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "state": dict(self.state, early=early.state_dict() if early else None),
            "rng": rng_state(),
            "log": self.log_rows,
        }

    def resume(self) -> None:
        """Continue from ``last.pt``: weights, optimiser, scaler, position, log and RNG state."""
        path = self.out / "last.pt"
        ckpt = load_checkpoint(path, map_location=self.rt.device)
        if ckpt.get("kind", "resumable") != "resumable" or "optimizer" not in ckpt:
            raise ValueError(f"{path}: an inference-only checkpoint (no optimiser state); cannot resume it")
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = ckpt["state"]
        self.scheduler_state = ckpt["scheduler"]
        self.log_rows = ckpt["log"]
        set_rng_state(ckpt["rng"])

    def _checkpoint(self, scheduler, early, phase: PhaseConfig, val: dict) -> None:
        improved = val["mean_dice"] > self.state["best_dice"]
        if improved:
            self.state["best_dice"] = float(val["mean_dice"])
        if not self.rt.is_main:
            return
        payload = self.payload(scheduler, early, phase.resolution, val["mean_dice"])
        save_checkpoint(self.out / "last.pt", payload)
        if improved:
            save_checkpoint(self.out / "best.pt", inference_checkpoint(payload))
        write_csv_atomic(pd.DataFrame(self.log_rows, columns=LOG_COLUMNS), self.out / "log.csv")
        _tensorboard(self.out, self.log_rows[-1])

    # -- one epoch -------------------------------------------------------------------
    def _forward(self, model, images: torch.Tensor) -> torch.Tensor:
        x = models.to_input(images.to(self.rt.device, non_blocking=True), self.mean, self.std)
        with autocast(self.amp_dtype, self.rt.device):
            return model(x.contiguous(memory_format=self.memory_format)).float()

    def train_epoch(self, model, loader, loss_fn, scheduler, phase: PhaseConfig) -> float:
        """One pass over ``loader``; returns the mean training loss over all processes."""
        model.train()
        models.freeze_bn_of_frozen(unwrap(model))
        accum = max(1, self.exp.train.accumulation)
        total, count = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        desc = f"{self.fold} e{self.state['epoch']} {phase.name or phase.unfreeze}"
        bar = progress_iter(loader, desc=desc, enabled=self.progress, leave=False, unit="batch")
        for i, (images, masks, _) in enumerate(bar):
            logits = self._forward(model, images)
            loss = loss_fn(logits, masks.to(self.rt.device))
            self.scaler.scale(loss / accum).backward()
            if (i + 1) % accum == 0 or i + 1 == len(loader):
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.state["step"] += 1
                if phase.schedule == "cyclic":
                    scheduler.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        sums = all_gather_objects((total, count), self.rt)
        return sum(s for s, _ in sums) / max(1, sum(c for _, c in sums))

    @torch.no_grad()
    def validate(self, model, phase: PhaseConfig, loss_fn) -> dict:
        """Loss and Dice summary (``metrics.summarize_counts``) on the fold's validation images."""
        model.eval()
        ids = self.data.val_ids[self.rt.rank :: self.rt.world]
        loader = DataLoader(
            CachedDataset(self.prepared, ids, phase.resolution),
            batch_size=batch_size_for(self.exp, phase),
            num_workers=min(self.exp.train.workers, 2),
            shuffle=False,
        )
        counts, loss_sum = [], 0.0
        level = self.exp.train.val_threshold
        for images, masks, _ in loader:
            logits = self._forward(unwrap(model), images)
            masks = masks.to(self.rt.device)
            loss_sum += float(loss_fn(logits, masks)) * len(images)
            pred = torch.sigmoid(logits) > level
            truth = masks > 0.5
            inter, n_pred, n_true = (pred & truth).sum((1, 2, 3)), pred.sum((1, 2, 3)), truth.sum((1, 2, 3))
            counts.append(torch.stack([inter, n_pred, n_true], 1).cpu())
        local = (torch.cat(counts).numpy() if counts else np.zeros((0, 3), np.int64), loss_sum)
        gathered = all_gather_objects(local, self.rt)
        c = np.concatenate([g[0] for g in gathered])
        summary = metrics.summarize_counts(c[:, 0], c[:, 1], c[:, 2], phase.resolution**2)
        summary["loss"] = sum(g[1] for g in gathered) / max(1, len(c))
        return summary

    # -- the curriculum --------------------------------------------------------------
    def _start_phase(self, phase: PhaseConfig) -> _Phase:
        """Unfreeze, (re)wrap, build loss, data and schedule; on resume restore the phase's position."""
        bare = unwrap(self.model)
        models.set_trainable(bare, self.exp.model.encoder, phase.unfreeze)
        model = self.model
        if self.rt.distributed:  # re-wrap: DDP registers only the currently trainable parameters
            ids = [self.rt.device] if self.rt.device.type == "cuda" else None
            # smp's efficientnet keeps a head (_conv_head/_bn1) its forward never uses
            unused = models.get_spec(self.exp.model.encoder).family == "efficientnet"
            model = DistributedDataParallel(bare, device_ids=ids, find_unused_parameters=unused)
        seed, batch = self.exp.train.seed, batch_size_for(self.exp, phase)
        dataset = CachedDataset(self.prepared, self.data.train_ids, phase.resolution, self.augment, seed=seed)
        sampler = EpochSampler(
            self.data.train_labels,
            seed=seed,
            rank=self.rt.rank,
            world=self.rt.world,
            positive_share=phase.positive_share,
        )
        loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=self.exp.train.workers,
            pin_memory=self.rt.device.type == "cuda",
            drop_last=len(sampler) > batch,
        )
        steps = math.ceil(len(loader) / max(1, self.exp.train.accumulation))
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        scheduler = make_scheduler(phase, self.optimizer, steps)
        early = schedule.EarlyStopping(patience=phase.early_stopping) if phase.early_stopping else None
        if self.state["epoch_in_phase"] > 0:  # resumed: scheduler position, LR, early-stopping counters
            if scheduler is not None and self.scheduler_state is not None:
                scheduler.load_state_dict(self.scheduler_state)
            for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            if early is not None and self.state.get("early"):
                early.load_state_dict(self.state["early"])
        self.scheduler_state = None
        loss_fn = losses.build_loss(phase.loss)
        return _Phase(phase, model, loss_fn, dataset, sampler, loader, scheduler, early)

    def _epoch(self, p: _Phase) -> bool:
        """Train and validate one epoch, log and checkpoint it; True when the phase is over."""
        phase, t0 = p.config, time.perf_counter()
        p.dataset.epoch = self.state["epoch"]
        p.sampler.set_epoch(self.state["epoch"])
        train_loss = self.train_epoch(p.model, p.loader, p.loss_fn, p.scheduler, phase)
        val = self.validate(p.model, phase, p.loss_fn)
        if phase.schedule == "plateau":
            p.scheduler.step(val["loss"])
        stop_early = p.early.step(val["loss"]) if p.early is not None else False
        self._log(self.state["phase"], phase, train_loss, val, time.perf_counter() - t0)
        self.state["epoch"] += 1
        self.state["epoch_in_phase"] += 1
        phase_done = stop_early or self.state["epoch_in_phase"] >= phase.epochs
        if phase_done:  # advance before saving, so a resume starts the next phase fresh
            self.state.update(phase=self.state["phase"] + 1, epoch_in_phase=0, early=None)
            if stop_early and self.rt.is_main:
                progress_write(f"[{self.fold}] early stop: no val-loss gain in {phase.early_stopping} epochs")
        self._checkpoint(None if phase_done else p.scheduler, None if phase_done else p.early, phase, val)
        return phase_done

    def run(self, stop_after: int | None = None) -> dict:
        """Train from the current position to the end (or for ``stop_after`` epochs); a summary."""
        phases = self.exp.train.phases
        ran = 0
        while self.state["phase"] < len(phases):
            p = self._start_phase(phases[self.state["phase"]])
            while self.state["epoch_in_phase"] < p.config.epochs:
                phase_done = self._epoch(p)
                ran += 1
                if phase_done:
                    break
                if stop_after is not None and ran >= stop_after:
                    return {"stopped": True, "epochs_run": ran}
            if stop_after is not None and ran >= stop_after and self.state["phase"] < len(phases):
                return {"stopped": True, "epochs_run": ran}
        return {"stopped": False, "epochs_run": ran, "best_dice": self.state["best_dice"]}

    def _log(self, p_idx: int, phase: PhaseConfig, train_loss: float, val: dict, seconds: float) -> None:
        row = {
            "phase": p_idx,
            "phase_name": phase.name,
            "epoch": self.state["epoch"],
            "epoch_in_phase": self.state["epoch_in_phase"],
            "resolution": phase.resolution,
            "unfreeze": phase.unfreeze,
            "loss": losses.build_loss(phase.loss).describe(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            **{f"val_{k}": val[k] for k in ("loss", "mean_dice", "pos_dice", "neg_dice", "pos_accuracy")},
            "seconds": round(seconds, 2),
        }
        self.log_rows.append(row)
        if self.rt.is_main:
            progress_write(
                f"[{self.fold}] epoch {row['epoch']} phase {p_idx} ({phase.name or phase.unfreeze}) "
                f"lr {row['lr']:.2e} train {train_loss:.4f} val {val['loss']:.4f} "
                f"dice {val['mean_dice']:.4f} (pos {val['pos_dice']:.3f} neg {val['neg_dice']:.3f}) "
                f"{seconds:.1f}s"
            )


def _tensorboard(out: Path, row: dict) -> None:
    """Mirror the epoch row to TensorBoard when it is installed (optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: only with train.tensorboard
    except Exception:  # tensorboard not installed: the CSV log is the record
        return
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for key in ("lr", "train_loss", "val_loss", "val_mean_dice", "val_pos_dice", "val_neg_dice"):
            writer.add_scalar(key, row[key], row["epoch"])

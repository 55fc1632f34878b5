"""``segment train``: the curriculum loop (phases of resolution / unfreezing / loss / LR schedule).

One run trains one fold model into ``models/<exp>/segmenter/<fold>/``:

    last.pt, best.pt   complete checkpoints (atomic); best = highest validation mean Dice
                       under the challenge rule at ``train.val_threshold``
    log.csv            one row per epoch: phase, epoch, lr, losses, validation Dice, seconds
    config.json        the resolved experiment; versions.json: library versions
    done.json          written when the curriculum finished (a re-run then skips)

Folds: ``main`` trains on the train split and validates on val (the progressive paper's
primary split); ``K`` trains on train+val minus fold K and validates on fold K (its
models give the out-of-fold maps stage two learns from).
"""

from __future__ import annotations

import json
import math
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dualstage import metrics
from dualstage.config import Experiment, PhaseConfig, to_dict
from dualstage.data.dataset import CachedDataset, EpochSampler, build_augment, cached_sizes, load_split_table
from dualstage.io import write_csv_atomic, write_json_atomic
from dualstage.progress import progress as progress_iter
from dualstage.progress import progress_write
from dualstage.segment import losses, models, schedule
from dualstage.segment.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from dualstage.segment.distributed import Runtime, all_gather_objects, setup_runtime, teardown

__all__ = ["train", "fold_ids", "fold_names", "autocast_dtype", "library_versions", "SCHEDULES"]

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


def library_versions() -> dict:
    """Versions of the libraries a result depends on."""
    import albumentations
    import segmentation_models_pytorch as smp

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


def fold_ids(table: pd.DataFrame, name: str) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of a fold folder name."""
    if name == "main":
        return table.loc[table.split == "train", "image_id"].tolist(), table.loc[
            table.split == "val", "image_id"
        ].tolist()
    k = int(name.removeprefix("fold_"))
    dev = table[table.split != "test"]
    return dev.loc[dev.fold != k, "image_id"].tolist(), dev.loc[dev.fold == k, "image_id"].tolist()


def autocast_dtype(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """Mixed precision policy: ``auto`` is bf16/fp16 on CUDA and fp32 (None) on CPU."""
    if amp in ("off", False, None):  # YAML reads a bare `off` as False
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ("bf16", "fp16"):
        if amp == "fp16" and device.type != "cuda":
            raise ValueError("amp: fp16 needs CUDA; use bf16 or off on CPU")
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"amp {amp!r}: expected auto, bf16, fp16 or off")


def _check_phases(exp: Experiment, prepared: Path) -> None:
    phases = exp.train.phases
    if not phases:
        raise ValueError(f"experiment {exp.name}: train.phases is empty")
    sizes = cached_sizes(prepared)
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


def _batch_size(exp: Experiment, phase: PhaseConfig) -> int:
    if phase.batch_size:
        return phase.batch_size
    table = {int(k): int(v) for k, v in exp.train.batch_size.items()}
    if phase.resolution not in table:
        raise ValueError(
            f"no batch size for resolution {phase.resolution}: set train.batch_size[{phase.resolution}]"
        )
    return table[phase.resolution]


def _make_scheduler(phase: PhaseConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    if phase.schedule == "cyclic":
        cycle = schedule.cycle_steps_for(steps_per_epoch, phase.cycle_epochs or phase.epochs)
        return schedule.make_cyclic(optimizer, phase.base_lr, phase.max_lr, cycle)
    for group in optimizer.param_groups:
        group["lr"] = phase.base_lr
    if phase.schedule == "plateau":
        return schedule.make_plateau(optimizer, factor=phase.plateau_factor, patience=phase.plateau_patience)
    return None


class _Trainer:
    def __init__(
        self, exp: Experiment, fold: str, prepared: Path, out: Path, runtime: Runtime, progress: bool
    ):
        self.exp, self.fold, self.prepared, self.out, self.rt = exp, fold, prepared, out, runtime
        self.progress = progress and runtime.is_main
        cfg = exp.train
        table = load_split_table(prepared)
        train_ids, val_ids = fold_ids(table, fold)
        if cfg.max_train_images:
            train_ids = train_ids[: cfg.max_train_images]
        if cfg.max_val_images:
            val_ids = val_ids[: cfg.max_val_images]
        if not train_ids or not val_ids:
            raise ValueError(f"fold {fold}: {len(train_ids)} training and {len(val_ids)} validation images")
        labels = table.set_index("image_id")["has_pneumothorax"]
        self.train_ids, self.val_ids = train_ids, val_ids
        self.train_labels = labels.loc[train_ids].to_numpy()
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
        self.optimizer = torch.optim.Adam(
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
    def _payload(self, scheduler, early) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "state": dict(self.state, early=early.state_dict() if early else None),
            "rng": rng_state(),
            "log": self.log_rows,
            "experiment": to_dict(self.exp),
            "fold": self.fold,
            "encoder": self.exp.model.encoder,
            "decoder_channels": self.exp.model.decoder_channels,
            "normalization": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()},
        }

    def resume(self) -> None:
        ckpt = load_checkpoint(self.out / "last.pt", map_location=self.rt.device)
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = ckpt["state"]
        self.scheduler_state = ckpt["scheduler"]
        self.log_rows = ckpt["log"]
        set_rng_state(ckpt["rng"])

    # -- one epoch -------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.amp_dtype)

    def _forward(self, model, images: torch.Tensor) -> torch.Tensor:
        x = models.to_input(images.to(self.rt.device, non_blocking=True), self.mean, self.std)
        with self._autocast():
            return model(x.contiguous(memory_format=self.memory_format)).float()

    def train_epoch(self, model, loader, loss_fn, scheduler, phase: PhaseConfig) -> float:
        model.train()
        models.freeze_bn_of_frozen(unwrap(model))
        accum = max(1, self.exp.train.accumulation)
        total, count = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        bar = progress_iter(
            loader,
            desc=f"{self.fold} e{self.state['epoch']} {phase.name or phase.unfreeze}",
            enabled=self.progress,
            leave=False,
            unit="batch",
        )
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
        model.eval()
        ids = self.val_ids[self.rt.rank :: self.rt.world]
        loader = DataLoader(
            CachedDataset(self.prepared, ids, phase.resolution),
            batch_size=_batch_size(self.exp, phase),
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
            counts.append(
                torch.stack(
                    [(pred & truth).sum((1, 2, 3)), pred.sum((1, 2, 3)), truth.sum((1, 2, 3))], 1
                ).cpu()
            )
        local = (torch.cat(counts).numpy() if counts else np.zeros((0, 3), np.int64), loss_sum)
        gathered = all_gather_objects(local, self.rt)
        c = np.concatenate([g[0] for g in gathered])
        summary = metrics.summarize_counts(c[:, 0], c[:, 1], c[:, 2], phase.resolution**2)
        summary["loss"] = sum(g[1] for g in gathered) / max(1, len(c))
        return summary

    # -- the curriculum --------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict:
        phases = self.exp.train.phases
        ran = 0
        while self.state["phase"] < len(phases):
            phase = phases[self.state["phase"]]
            bare = unwrap(self.model)
            models.set_trainable(bare, self.exp.model.encoder, phase.unfreeze)
            model = self.model
            if self.rt.distributed:  # re-wrap: DDP registers only the currently trainable parameters
                ids = [self.rt.device] if self.rt.device.type == "cuda" else None
                # smp's efficientnet keeps a head (_conv_head/_bn1) its forward never uses
                unused = models.get_spec(self.exp.model.encoder).family == "efficientnet"
                model = DistributedDataParallel(bare, device_ids=ids, find_unused_parameters=unused)
            loss_fn = losses.build_loss(phase.loss)
            batch = _batch_size(self.exp, phase)
            dataset = CachedDataset(
                self.prepared, self.train_ids, phase.resolution, self.augment, seed=self.exp.train.seed
            )
            sampler = EpochSampler(
                self.train_labels,
                seed=self.exp.train.seed,
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
            resumed = self.state["epoch_in_phase"] > 0
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            scheduler = _make_scheduler(phase, self.optimizer, steps)
            early = schedule.EarlyStopping(patience=phase.early_stopping) if phase.early_stopping else None
            if resumed:  # continue the phase exactly: scheduler position, LR, early-stopping counters
                if scheduler is not None and self.scheduler_state is not None:
                    scheduler.load_state_dict(self.scheduler_state)
                for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
                    group["lr"] = lr
                if early is not None and self.state.get("early"):
                    early.load_state_dict(self.state["early"])
            self.scheduler_state = None
            while self.state["epoch_in_phase"] < phase.epochs:
                t0 = time.perf_counter()
                dataset.epoch = self.state["epoch"]
                sampler.set_epoch(self.state["epoch"])
                train_loss = self.train_epoch(model, loader, loss_fn, scheduler, phase)
                val = self.validate(model, phase, loss_fn)
                if phase.schedule == "plateau":
                    scheduler.step(val["loss"])
                stop_early = early.step(val["loss"]) if early is not None else False
                self._log(self.state["phase"], phase, train_loss, val, time.perf_counter() - t0)
                self.state["epoch"] += 1
                self.state["epoch_in_phase"] += 1
                phase_done = stop_early or self.state["epoch_in_phase"] >= phase.epochs
                if phase_done:  # advance before saving, so a resume starts the next phase fresh
                    self.state.update(phase=self.state["phase"] + 1, epoch_in_phase=0, early=None)
                    if stop_early and self.rt.is_main:
                        patience = phase.early_stopping
                        progress_write(f"[{self.fold}] early stop: no val-loss gain in {patience} epochs")
                self._checkpoint(None if phase_done else scheduler, None if phase_done else early, val)
                ran += 1
                if phase_done:
                    break
                if stop_after is not None and ran >= stop_after:
                    return {"stopped": True, "epochs_run": ran}
            if stop_after is not None and ran >= stop_after and self.state["phase"] < len(phases):
                return {"stopped": True, "epochs_run": ran}
        return {"stopped": False, "epochs_run": ran, "best_dice": self.state["best_dice"]}

    def _log(self, p_idx: int, phase: PhaseConfig, train_loss: float, val: dict, seconds: float) -> None:
        self.log_rows.append(
            {
                "phase": p_idx,
                "phase_name": phase.name,
                "epoch": self.state["epoch"],
                "epoch_in_phase": self.state["epoch_in_phase"],
                "resolution": phase.resolution,
                "unfreeze": phase.unfreeze,
                "loss": losses.build_loss(phase.loss).describe(),
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_mean_dice": val["mean_dice"],
                "val_pos_dice": val["pos_dice"],
                "val_neg_dice": val["neg_dice"],
                "val_pos_accuracy": val["pos_accuracy"],
                "seconds": round(seconds, 2),
            }
        )
        if self.rt.is_main:
            r = self.log_rows[-1]
            progress_write(
                f"[{self.fold}] epoch {r['epoch']} phase {p_idx} ({phase.name or phase.unfreeze}) "
                f"lr {r['lr']:.2e} train {train_loss:.4f} val {val['loss']:.4f} "
                f"dice {val['mean_dice']:.4f} (pos {val['pos_dice']:.3f} neg {val['neg_dice']:.3f}) "
                f"{seconds:.1f}s"
            )

    def _checkpoint(self, scheduler, early, val: dict) -> None:
        improved = val["mean_dice"] > self.state["best_dice"]
        if improved:
            self.state["best_dice"] = float(val["mean_dice"])
        if not self.rt.is_main:
            return
        payload = self._payload(scheduler, early)
        save_checkpoint(self.out / "last.pt", payload)
        if improved:
            save_checkpoint(self.out / "best.pt", payload)
        write_csv_atomic(pd.DataFrame(self.log_rows, columns=LOG_COLUMNS), self.out / "log.csv")
        _tensorboard(self.out, self.log_rows[-1])


def _tensorboard(out: Path, row: dict) -> None:
    """Mirror the epoch row to TensorBoard when it is installed (optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: the CSV log is the record
        return
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for key in ("lr", "train_loss", "val_loss", "val_mean_dice", "val_pos_dice", "val_neg_dice"):
            writer.add_scalar(key, row[key], row["epoch"])


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
        torch.manual_seed(exp.train.seed)
        np.random.seed(exp.train.seed)
        _check_phases(exp, prepared)
        table = load_split_table(prepared)
        results = []
        for name in fold_names(str(fold), table):
            out = exp.folder / "segmenter" / name
            if (out / "done.json").exists():
                if runtime.is_main:
                    print(f"[train] {name}: finished already ({out / 'done.json'})")
                results.append({"fold": name, "skipped": True})
                continue
            if (out / "last.pt").exists() and not resume:
                raise RuntimeError(f"{out / 'last.pt'} exists: pass --resume to continue it, or delete {out}")
            out.mkdir(parents=True, exist_ok=True)
            trainer = _Trainer(exp, name, prepared, out, runtime, progress)
            if resume and (out / "last.pt").exists():
                trainer.resume()
            elif runtime.is_main:
                write_json_atomic(out / "config.json", to_dict(exp))
                write_json_atomic(out / "versions.json", library_versions())
            t0 = time.perf_counter()
            result = trainer.run(stop_after=stop_after)
            result.update(fold=name, seconds=round(time.perf_counter() - t0, 1), world=runtime.world)
            if not result["stopped"] and runtime.is_main:
                write_json_atomic(out / "done.json", result)
            results.append(result)
            if result["stopped"]:
                break
        return results
    finally:
        teardown()

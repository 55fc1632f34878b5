"""A training epoch (``segment train``'s loop) vs a bare forward + backward + step loop in memory.

Claim ``train_epoch_vs_bare_step`` (benchmarks/results.json): bare seconds / epoch seconds over the
same number of batches, target >= 0.85. Epoch: :meth:`dualstage.segment.loop.Trainer.train_epoch`
over the phase's own loader (cache PNG decode, albumentations, the epoch sampler, collation,
normalisation, forward, loss, backward, Adam, the cyclic LR step, the running loss); validation
excluded. Bare: the same model, optimiser, loss, batch size, threads, resolution, precision and
channels_last on normalised tensors and masks already in memory. The demo's set-up (U-Net ResNet18,
half decoder, 128 px, batch 16, fp32 channels_last, workers 0). Timed alternately (bare, epoch,
...) after one untimed round; the fastest round of each is compared (the least
disturbed on a shared machine).
Run: make bench  (or .venv/bin/python benchmarks/bench_train_ratio.py [n_images] [encoder] [resolution])
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from _results import alternate, machine, ratio, record
from _setup import phantom_experiment

from dualstage.data.dataset import load_split_table
from dualstage.runtime.distributed import setup_runtime
from dualstage.runtime.precision import autocast
from dualstage.segment import models
from dualstage.segment.loop import FoldData, Trainer


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    encoder = sys.argv[2] if len(sys.argv) > 2 else "resnet18"
    res = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    batch = 16
    loss = {"name": "weighted_bce", "pos_weight": 5.0}
    with tempfile.TemporaryDirectory() as tmp:
        exp = phantom_experiment(
            Path(tmp),
            n,
            512,
            res,
            encoder,
            decoder_channels=[128, 64, 32, 16, 8],
            batch_size=batch,
            train={
                "phases": [
                    {"resolution": res, "unfreeze": "all", "loss": loss, "epochs": 1, "positive_share": 0.5}
                ]
            },
        )
        prepared = exp.folder / "prepared"
        table = load_split_table(prepared)
        ids = table["image_id"].tolist()
        data = FoldData(ids, ids[:1], table["has_pneumothorax"].to_numpy())
        out = exp.folder / "segmenter" / "main"
        out.mkdir(parents=True)
        torch.manual_seed(0)
        trainer = Trainer(exp, "main", data, prepared, out, setup_runtime("cpu"), progress=False)
        phase = trainer._start_phase(exp.train.phases[0])
        steps = len(phase.loader)
        gray, masks = [], []
        for images, m, _ in phase.loader:  # the same batches, decoded once, kept in memory
            gray.append(
                models.to_input(images, trainer.mean, trainer.std).contiguous(
                    memory_format=trainer.memory_format
                )
            )
            masks.append(m)
        model, optimizer, loss_fn = phase.model, trainer.optimizer, phase.loss_fn

        def bare() -> None:
            model.train()
            for x, y in zip(gray, masks, strict=True):
                with autocast(trainer.amp_dtype, trainer.rt.device):
                    logits = model(x).float()
                loss_value = loss_fn(logits, y)
                loss_value.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        def epoch() -> None:
            trainer.train_epoch(model, phase.loader, loss_fn, phase.scheduler, phase.config)

        times = alternate({"bare": bare, "epoch": epoch}, rounds=3)
    t_bare, t_epoch = min(times["bare"]), min(times["epoch"])
    ratios = ratio(times, "bare", "epoch")
    print(
        f"U-Net {encoder} (half decoder) at {res} px, {steps} batches of {batch}, "
        f"{'fp32' if trainer.amp_dtype is None else trainer.amp_dtype}, channels_last, workers "
        f"{exp.train.workers}, {torch.get_num_threads()} threads: bare {t_bare:.2f}s, epoch {t_epoch:.2f}s "
        f"({t_bare / steps * 1000:.0f} vs {t_epoch / steps * 1000:.0f} ms/step); ratio {ratios['best']:.3f} "
        f"(median of rounds {ratios['median']:.3f}, CPU {ratios['cpu']:.3f})"
    )
    record(
        "train_epoch_vs_bare_step",
        ratios["best"],
        0.85,
        "bare s / epoch s",
        images=steps * batch,
        batches=steps,
        encoder=encoder,
        decoder_channels=[128, 64, 32, 16, 8],
        resolution=res,
        batch_size=batch,
        precision="fp32",
        channels_last=True,
        workers=exp.train.workers,
        seconds={k: [round(t, 2) for t in v] for k, v in times.items()},
        ratio_median_of_rounds=round(ratios["median"], 3),
        ratio_cpu_seconds=round(ratios["cpu"], 3),
        **machine(),
    )


if __name__ == "__main__":
    main()

"""Checkpoint sizes: resumable ``last.pt`` (weights + Adam + RNG) vs inference ``best.pt`` (weights).

Builds the demo's U-Net (experiments/demo.yaml: ResNet18, decoder [128, 64, 32, 16, 8]) and a
U-Net SE-ResNeXt-50 (smp's default decoder), both ``weights: none`` (offline), takes one Adam
step with every parameter trainable (the curriculum's ``all`` phase, where Adam's state is
largest), and saves both checkpoint kinds as ``segment train`` does. Before the split, ``best.pt``
was a copy of the resumable payload, so the resumable size is also the old ``best.pt`` size.
Run: make bench  (or .venv/bin/python benchmarks/bench_checkpoint_size.py)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from dualstage.config import load_experiment, to_dict
from dualstage.segment import losses, models
from dualstage.segment.checkpoint import FORMAT, inference_checkpoint, rng_state, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


def resumable_payload(net: torch.nn.Module, encoder: str, decoder_channels, experiment: dict) -> dict:
    """What ``segment train`` saves as ``last.pt`` after one Adam step on every parameter."""
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.9).float()
    losses.build_loss("soft_dice")(net(x), y).backward()
    optimizer.step()
    return {
        "format": FORMAT,
        "kind": "resumable",
        "model": net.state_dict(),
        "encoder": encoder,
        "decoder_channels": list(decoder_channels) if decoder_channels else None,
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "resolution": 128,
        "experiment": experiment,
        "fold": "main",
        "epoch": 1,
        "val_mean_dice": 0.0,
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(),
        "state": {"phase": 0, "epoch_in_phase": 1, "epoch": 1, "step": 1, "best_dice": 0.0, "early": None},
        "rng": rng_state(),
        "log": [],
    }


def sizes(encoder: str, decoder_channels, experiment: dict) -> dict:
    """{"params", "resumable_mb", "inference_mb", "ratio"} for one U-Net."""
    torch.manual_seed(0)
    net = models.build_model(encoder, "none", decoder_channels=decoder_channels)
    payload = resumable_payload(net, encoder, decoder_channels, experiment)
    with tempfile.TemporaryDirectory() as tmp:
        last = save_checkpoint(Path(tmp) / "last.pt", payload)
        best = save_checkpoint(Path(tmp) / "best.pt", inference_checkpoint(payload))
        resumable, inference = last.stat().st_size / MB, best.stat().st_size / MB
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "resumable_mb": round(resumable, 1),
        "inference_mb": round(inference, 1),
        "ratio": round(resumable / inference, 2),
    }


def main() -> None:
    demo = load_experiment(ROOT / "experiments" / "demo.yaml")
    experiment = to_dict(demo)
    rows = {
        f"demo U-Net {demo.model.encoder} {list(demo.model.decoder_channels)}": sizes(
            demo.model.encoder, demo.model.decoder_channels, experiment
        ),
        "U-Net se_resnext50_32x4d (default decoder)": sizes("se_resnext50_32x4d", None, experiment),
    }
    print(f"{'model':<52} {'params':>11} {'last.pt MB':>11} {'best.pt MB':>11} {'ratio':>6}")
    for name, r in rows.items():
        mb = f"{r['resumable_mb']:>11} {r['inference_mb']:>11}"
        print(f"{name:<52} {r['params']:>11,} {mb} {r['ratio']:>6}")
    print("before: best.pt = the resumable size; 3 folds kept 2 copies each")
    print(json.dumps({"checkpoint_size": rows}))
    for key, (name, r) in zip(("demo", "se_resnext50"), rows.items(), strict=True):
        record(
            f"checkpoint_inference_share_{key}",
            r["inference_mb"] / r["resumable_mb"],
            0.5,
            "best.pt MB / last.pt MB (weights only vs optimizer + RNG state)",
            op="<=",
            model=name,
            params=r["params"],
            before_mb=r["resumable_mb"],
            after_mb=r["inference_mb"],
            note="before: best.pt was as large as last.pt (it carried Adam's state)",
        )


if __name__ == "__main__":
    main()

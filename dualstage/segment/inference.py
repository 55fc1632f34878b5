"""Segmenters ready for inference: find an experiment's models, load them, average their maps."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from dualstage.layout import ExperimentDir
from dualstage.segment import models
from dualstage.segment.checkpoint import inference_resolution, load_checkpoint
from dualstage.segment.precision import autocast_dtype

__all__ = ["LoadedModel", "select_models", "load_models", "probabilities", "autocast_context"]

CHECKPOINTS = {"best": ("best.pt",), "last": ("last.pt",), "both": ("best.pt", "last.pt")}


@dataclass
class LoadedModel:
    """A fold model ready for inference."""

    name: str
    net: torch.nn.Module
    resolution: int
    mean: torch.Tensor
    std: torch.Tensor
    config: dict


def select_models(exp: ExperimentDir, only: list[str] | None = None) -> dict[str, Path]:
    """{model name: folder} of the experiment's trained models, restricted to ``only`` when given."""
    trained = exp.trained_models()
    if not trained:
        raise FileNotFoundError(
            f"{exp.segmenter}: no trained model (no */last.pt); run `segment train` first"
        )
    if not only:
        return trained
    unknown = sorted(set(only) - set(trained))
    if unknown:
        raise ValueError(f"--folds {unknown}: not trained; available: {', '.join(trained)}")
    return {k: v for k, v in trained.items() if k in only}


def _load_one(path: Path, model_name: str, device: torch.device) -> LoadedModel:
    ckpt = load_checkpoint(path, map_location=device)
    net = models.build_model(ckpt["encoder"], "none", decoder_channels=ckpt.get("decoder_channels"))
    net.load_state_dict(ckpt["model"])
    net.to(device).eval()
    norm = ckpt["normalization"]
    config = ckpt["experiment"]
    return LoadedModel(
        name=f"{model_name}/{path.stem}",
        net=net,
        resolution=inference_resolution(ckpt),
        mean=torch.tensor(norm["mean"], device=device),
        std=torch.tensor(norm["std"], device=device),
        config=config,
    )


def load_models(
    folders: dict[str, Path], checkpoint: str, device: torch.device
) -> dict[str, list[LoadedModel]]:
    """{model name: [LoadedModel per checkpoint]}; ``checkpoint`` is best | last | both."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}")
    out = {}
    for name, folder in folders.items():
        paths = [folder / f if (folder / f).exists() else folder / "last.pt" for f in CHECKPOINTS[checkpoint]]
        out[name] = [_load_one(p, name, device) for p in paths]
    return out


def autocast_context(amp: str, device: torch.device) -> Callable:
    """A factory of autocast contexts for the experiment's ``train.amp`` setting on ``device``."""
    dtype = autocast_dtype(amp, device)

    def context():
        return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    return context


@torch.no_grad()
def probabilities(group: list[LoadedModel], images: torch.Tensor, tta: bool, amp: Callable) -> torch.Tensor:
    """Mean sigmoid over models (and the horizontal flip) of (N, 1, S, S) images; float32 (N, 1, S, S)."""
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

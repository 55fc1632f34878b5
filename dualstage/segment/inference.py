"""Segmenters ready for inference: find an experiment's models, load them, average their maps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dualstage.artifacts.layout import ExperimentDir
from dualstage.runtime.precision import autocast
from dualstage.segment import models
from dualstage.segment.checkpoint import inference_resolution, load_checkpoint

__all__ = [
    "LoadedModel",
    "select_models",
    "load_models",
    "probabilities",
    "autocast_context",
    "fold_batchnorm",
]

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


def _conv_bn_pairs(net: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, bn name) of each BatchNorm2d applied right after a Conv2d: consecutive
    children of a Sequential, or ``convK`` / ``bnK`` attributes (torchvision / smp blocks)."""
    pairs = []
    for parent in net.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:], strict=False):
                if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d):
                    pairs.append((parent, a, b))
            continue
        for name, module in children.items():
            bn = "bn" + name.removeprefix("conv")
            if name.startswith("conv") and isinstance(module, nn.Conv2d):
                if isinstance(children.get(bn), nn.BatchNorm2d):
                    pairs.append((parent, name, bn))
    return pairs


@torch.no_grad()
def fold_batchnorm(net: nn.Module, size: int = 64) -> bool:
    """Fold, in place, each BatchNorm of eval-mode ``net`` into the convolution before it; True if done.

    Inference only (running statistics are constants): ~10 % less time per forward on CPU. The
    folded net's logits on one random (1, 3, size, size) input are checked against the unfolded
    ones; when they differ (a block whose forward does not apply the BatchNorm right after the
    convolution) every fold is undone and False returned.
    """
    net.eval()
    pairs = _conv_bn_pairs(net)
    if not pairs:
        return False
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(next(net.parameters()).device)
    try:
        want = net(x)
    except RuntimeError:  # an encoder that needs larger inputs: keep it as it is
        return False
    undo = [(parent, conv, bn, getattr(parent, conv), getattr(parent, bn)) for parent, conv, bn in pairs]
    for parent, conv, bn, c, b in undo:
        setattr(parent, conv, fuse_conv_bn_eval(c, b))
        setattr(parent, bn, nn.Identity())
    got = net(x)
    if got.shape == want.shape and torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max())):
        return True
    for parent, conv, bn, c, b in undo:
        setattr(parent, conv, c)
        setattr(parent, bn, b)
    return False


def _load_one(path: Path, model_name: str, device: torch.device) -> LoadedModel:
    ckpt = load_checkpoint(path, map_location=device)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
        net = models.build_model(ckpt["encoder"], "none", decoder_channels=ckpt.get("decoder_channels"))
    net.load_state_dict(ckpt["model"], assign=True)
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # a buffer the checkpoint lacks
        net = models.build_model(ckpt["encoder"], "none", decoder_channels=ckpt.get("decoder_channels"))
        net.load_state_dict(ckpt["model"])
    fold_batchnorm(net.to(device).eval())
    net = net.to(memory_format=torch.channels_last)  # as its inputs: no layout reorders
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


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> Callable:
    """A factory of autocast contexts at ``dtype`` on ``device`` (None: fp32, no autocast); see
    :func:`dualstage.runtime.precision.inference_dtype`."""

    def context():
        return autocast(dtype, device)

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

"""U-Net segmenters: model building, staged unfreezing and input normalisation.

The encoder registry (keys, smp names, the paper's units of unfreezing) lives in
:mod:`dualstage.segment.encoders` and weight files in :mod:`dualstage.runtime.weights`; their
public names are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dualstage.runtime.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WEIGHT_SUFFIXES,
    WeightsReport,
    file_unet,
    imagenet_unet,
    load_weights,
)
from dualstage.segment.encoders import (
    ENCODERS,
    GROUPS,
    EncoderSpec,
    UnknownEncoderError,
    check_size,
    encoder_group,
    encoder_groups_of,
    get_spec,
)

__all__ = [
    "ENCODERS",
    "GROUPS",
    "UNFREEZE_PHASES",
    "NORMALIZATION_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WEIGHT_SUFFIXES",
    "EncoderSpec",
    "UnknownEncoderError",
    "WeightsReport",
    "build_model",
    "check_size",
    "encoder_group",
    "encoder_groups_of",
    "freeze_bn_of_frozen",
    "get_spec",
    "load_weights",
    "normalization",
    "set_trainable",
    "to_input",
    "trainable_groups",
]

UNFREEZE_PHASES: tuple[str, ...] = ("decoder", "block4", "block3", "block2", "block1", "all")
NORMALIZATION_MODES: tuple[str, ...] = ("dataset", "encoder")

# Hard-coded: smp's get_preprocessing_params downloads a config file from the Hugging Face hub.


# --------------------------------------------------------------------------- building


def build_model(
    encoder: str,
    weights: str | None = "none",
    classes: int = 1,
    decoder_channels: Sequence[int] | None = None,
) -> nn.Module:
    """smp.Unet over a registry encoder; logits out (N, classes, H, W) for input (N, 3, H, W).

    ``decoder_channels``: smp's five decoder widths (default (256, 128, 64, 32, 16)); halving
    them trains about 2x faster on CPU (demos).

    weights: ``"imagenet"`` (smp's hub download or its local Hugging Face cache; RuntimeError when
    unavailable, never a silent fallback), ``"none"`` (random init) or a local ``.pth``/``.pt``/
    ``.safetensors`` state dict of the whole U-Net or of the encoder only (see ``load_weights``).
    """
    import segmentation_models_pytorch as smp  # heavy (timm): loaded when a model is built

    spec = get_spec(encoder)
    choice = "none" if weights is None else str(weights)
    kwargs = dict(encoder_name=spec.smp_name, in_channels=3, classes=classes, activation=None)
    if decoder_channels:
        kwargs["decoder_channels"] = tuple(int(c) for c in decoder_channels)
    if choice.lower() == "none":
        return smp.Unet(encoder_weights=None, **kwargs)
    if choice.lower() == "imagenet":
        return imagenet_unet(spec.key, spec.imagenet, kwargs)
    return file_unet(choice, kwargs)


# --------------------------------------------------------------------------- staged unfreezing


def trainable_groups(unfreeze: str) -> tuple[str, ...]:
    """Encoder groups trained in a phase: decoder -> (), block4 -> (block4,), ..., all -> all five."""
    if unfreeze not in UNFREEZE_PHASES:
        raise ValueError(f"unknown unfreeze phase {unfreeze!r}; valid phases: {', '.join(UNFREEZE_PHASES)}")
    if unfreeze == "decoder":
        return ()
    if unfreeze == "all":
        return GROUPS
    depth = int(unfreeze[-1])
    return tuple(f"block{i}" for i in range(4, depth - 1, -1))


def set_trainable(model: nn.Module, spec_or_name: str | EncoderSpec, unfreeze: str) -> dict[str, int]:
    """Set ``requires_grad`` for one phase of the progressive paper's Table 1.

    Decoder and heads are always trainable; "block4" adds encoder block 4, "block3" blocks 4 and 3,
    ..., "block1" blocks 4..1, "all" the stem too. Returns element counts
    {"trainable_params": ..., "frozen_params": ...}.
    """
    groups = set(trainable_groups(unfreeze))
    spec = get_spec(spec_or_name)
    trainable = frozen = 0
    for name, param in model.named_parameters():
        if name.startswith("encoder."):
            flag = encoder_group(spec, name[len("encoder.") :]) in groups
        else:
            flag = True
        param.requires_grad_(flag)
        if flag:
            trainable += param.numel()
        else:
            frozen += param.numel()
    return {"trainable_params": trainable, "frozen_params": frozen}


def freeze_bn_of_frozen(model: nn.Module) -> int:
    """Put BatchNorm layers whose parameters are all frozen into eval mode; returns how many.

    Call after ``model.train()`` at the start of each epoch. A BatchNorm in train mode normalises
    with batch statistics and overwrites its running statistics, so a "frozen" block would still
    change (and drift towards small, noisy X-ray batches, e.g. batch 3 at 1024 px) even though its
    weights do not. In eval mode the frozen blocks keep their ImageNet running statistics, as smp's
    ``freeze_encoder`` does. BatchNorms without affine parameters are left as they are.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


# --------------------------------------------------------------------------- input


def normalization(
    mode: str, stats: Mapping[str, float] | None = None
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per channel for pixels scaled to [0, 1].

    mode "dataset": prepare's stats.json ({"mean": float, "std": float} on pixel/255) replicated to
    3 channels; mode "encoder": ImageNet's mean/std.
    """
    if mode == "encoder":
        return IMAGENET_MEAN, IMAGENET_STD
    if mode != "dataset":
        raise ValueError(f"unknown normalization {mode!r}; valid modes: {', '.join(NORMALIZATION_MODES)}")
    if stats is None or "mean" not in stats or "std" not in stats:
        raise ValueError("normalization 'dataset' needs prepare's stats ({'mean': float, 'std': float})")
    mean, std = float(stats["mean"]), float(stats["std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"invalid dataset stats: mean={mean}, std={std} (std must be > 0)")
    return (mean, mean, mean), (std, std, std)


def to_input(gray: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Grayscale (N, 1, H, W) in [0, 1] -> normalised (N, 3, H, W), channel c = (x - mean[c]) / std[c]."""
    if gray.ndim != 4 or gray.shape[1] != 1:
        raise ValueError(f"to_input expects (N, 1, H, W), got shape {tuple(gray.shape)}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {len(mean)} and {len(std)}")
    dtype = gray.dtype if gray.is_floating_point() else torch.float32
    m = torch.as_tensor(mean, dtype=dtype, device=gray.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=gray.device).view(1, 3, 1, 1)
    return (gray.to(dtype).expand(-1, 3, -1, -1) - m) / s

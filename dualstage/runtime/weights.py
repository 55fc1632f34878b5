"""Weight loading for the U-Net segmenters: ImageNet (smp's hub) or a local state-dict file.

A local file is read without unpickling code (``torch.load(weights_only=True)`` or safetensors)
and may hold the whole U-Net or its encoder only; :func:`load_weights` detects which from the
key prefixes. ``classify/features.py`` reads DenseNet121 files through :func:`read_state_dict` too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "WEIGHT_SUFFIXES",
    "DENSENET_LEGACY",
    "WeightsReport",
    "read_state_dict",
    "load_weights",
    "imagenet_unet",
    "file_unet",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # what ImageNet weights expect
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")

# torchvision's pre-0.4 DenseNet keys ("denselayer1.norm.1.weight"): groups 1 + 2 give today's key
DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
UNET_PREFIXES: tuple[str, ...] = ("encoder.", "decoder.", "segmentation_head.", "classification_head.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.bin/.safetensors file; unwraps {"model": ...} / {"state_dict": ...}.

    Never runs code from the file: pickled objects other than tensors and plain containers are
    refused (ValueError naming the file), as are files without tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: only for .safetensors weight files

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"cannot read weights file {path}: {type(exc).__name__}: {first[:300]}") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"weights file {path} holds no tensors")
    return tensors


@dataclass(frozen=True)
class WeightsReport:
    """What ``load_weights`` did: file kind (unet | encoder) and key counts."""

    path: str
    kind: str
    loaded: int
    missing: int
    unexpected: int
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (
            f"weights {self.path} ({self.kind} state dict): {self.loaded} tensors loaded, "
            f"{self.missing} missing, {self.unexpected} unexpected"
            + (f"; missing e.g. {list(self.missing_keys[:5])}" if self.missing else "")
            + (f"; unexpected e.g. {list(self.unexpected_keys[:5])}" if self.unexpected else "")
        )


def _source_tensors(state: dict[str, torch.Tensor]) -> tuple[str, str, dict[str, torch.Tensor]]:
    """(kind, scope, tensors keyed as in the U-Net) after stripping wrapper prefixes."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for strip in ("module.", "_orig_mod."):
            if key.startswith(strip):
                key = key[len(strip) :]
        cleaned[key] = value
    if any(k.startswith(UNET_PREFIXES) for k in cleaned):
        return "unet", "", cleaned
    source = {}
    for key, value in cleaned.items():
        legacy = DENSENET_LEGACY.match(key)
        source["encoder." + (legacy.group(1) + legacy.group(2) if legacy else key)] = value
    return "encoder", "encoder.", source


def load_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load a local state dict of the whole U-Net or of its encoder only into an smp U-Net.

    The kind is detected from key prefixes (``encoder.``/``decoder.``/``segmentation_head.`` = whole
    U-Net, otherwise encoder-only); ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile)
    prefixes are stripped. Raises FileNotFoundError for a missing file, ValueError when no key matches
    or a matching key has the wrong shape. Missing / unexpected keys are counted in the report (and
    logged as a warning), since partial loads (e.g. another head) can be intended.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path} (weights must be 'imagenet', 'none' or a local file path)"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path} has suffix {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}")
    kind, scope, source = _source_tensors(read_state_dict(path))
    target = model.state_dict()
    expected = [k for k in target if k.startswith(scope)]
    matched = [k for k in source if k in target]
    if not matched:
        raise ValueError(
            f"no key of weights file {path} ({kind} state dict, {len(source)} tensors, e.g. "
            f"{list(source)[:3]}) matches the model (e.g. {expected[:3]}): wrong encoder or not a "
            "U-Net/encoder state dict"
        )
    bad = [k for k in matched if source[k].shape != target[k].shape]
    if bad:
        raise ValueError(
            f"weights file {path}: {len(bad)} tensors have the wrong shape, e.g. "
            + ", ".join(f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in bad[:3])
        )
    model.load_state_dict({k: source[k] for k in matched}, strict=False)
    missing = tuple(k for k in expected if k not in source)
    unexpected = tuple(k for k in source if k not in target)
    report = WeightsReport(str(path), kind, len(matched), len(missing), len(unexpected), missing, unexpected)
    if missing or unexpected:
        logger.warning("%s", report)
    return report


def imagenet_unet(key: str, has_imagenet: bool, unet_kwargs: dict) -> nn.Module:
    """smp.Unet with smp's ImageNet encoder weights (hub or local HF cache); RuntimeError if unavailable.

    ``unet_kwargs``: smp.Unet arguments (``encoder_name`` = the smp name of encoder ``key``).
    """
    import segmentation_models_pytorch as smp  # heavy (timm): loaded when a model is built

    smp_name = unet_kwargs["encoder_name"]
    if not has_imagenet:
        raise ValueError(
            f"smp has no ImageNet weights for encoder {key}; use weights: none "
            "or weights: /path/to/weights.pth"
        )
    try:
        model = smp.Unet(encoder_weights="imagenet", **unet_kwargs)
    except Exception as exc:  # hub errors vary (offline, HTTP, cache miss): all mean "not available"
        raise RuntimeError(
            f"could not get ImageNet weights for encoder {key} (smp {smp_name!r}, "
            f"Hugging Face repo smp-hub/{smp_name}.imagenet): {type(exc).__name__}: {exc}. "
            "Without internet, either train from scratch with `weights: none`, or point to a "
            "local file with `weights: /path/to/weights.pth` (a U-Net or encoder state dict; "
            "a pre-filled Hugging Face cache (HF_HOME) also works)."
        ) from exc
    logger.info("encoder %s: ImageNet weights loaded by smp", key)
    return model


def file_unet(path: str | Path, unet_kwargs: dict) -> nn.Module:
    """smp.Unet (random init) with a local weights file loaded over it (see :func:`load_weights`)."""
    import segmentation_models_pytorch as smp  # heavy (timm): loaded when a model is built

    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(
            f"weights file not found: {path} (weights must be 'imagenet', 'none' or a local file path)"
        )
    model = smp.Unet(encoder_weights=None, **unet_kwargs)
    logger.info("%s", load_weights(model, path))
    return model

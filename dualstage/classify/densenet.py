"""The DenseNet121 trunk phi of ``classify features``: loading its weights and embedding images.

phi(x) = global average pool of ReLU(DenseNet121 ``features``(x)), x a (N, 1, S, S) image in [0, 1]
replicated to 3 channels and normalised with ImageNet's mean / std: (N, 1024) float32. Inference
runs channels_last, at fp32 or under bf16 autocast (``classify features --precision``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dualstage.core.io import sha256_file
from dualstage.runtime.weights import DENSENET_LEGACY, IMAGENET_MEAN, IMAGENET_STD, read_state_dict

if TYPE_CHECKING:
    import torchvision

__all__ = ["load_densenet", "describe_weights", "embed", "torchvision_version", "N_DENSENET"]

N_DENSENET = 1024


def _load_file(net: torchvision.models.DenseNet, path: Path) -> None:
    """Load the ``features.*`` tensors of a densenet121 state dict (any head, or none) strictly."""
    target = net.features.state_dict()
    source: dict[str, torch.Tensor] = {}
    for key, value in read_state_dict(path).items():
        for strip in ("module.", "_orig_mod."):
            key = key.removeprefix(strip)
        if "features." in key:  # features.x, densenet121.features.x, model.features.x ...
            key = key[key.index("features.") + len("features.") :]
        legacy = DENSENET_LEGACY.match(key)  # old checkpoints: denselayer1.norm.1.weight
        source[legacy.group(1) + legacy.group(2) if legacy else key] = value
    needed = [k for k in target if not k.endswith("num_batches_tracked")]
    matched = [k for k in needed if k in source]
    if not matched:
        raise ValueError(
            f"weights file {path}: no key matches torchvision densenet121 features (file keys e.g. "
            f"{list(source)[:3]}; expected e.g. features.{needed[0]}): not a DenseNet121 state dict"
        )
    missing = [k for k in needed if k not in source]
    bad = [k for k in matched if source[k].shape != target[k].shape]
    if missing or bad:
        raise ValueError(
            f"weights file {path}: {len(missing)} densenet121 feature tensors missing (e.g. {missing[:3]}), "
            f"{len(bad)} of the wrong shape (e.g. {bad[:3]}): not a complete DenseNet121 trunk"
        )
    net.features.load_state_dict({k: source[k] for k in target if k in source}, strict=False)


def describe_weights(weights: str | Path) -> dict:
    """What features.json records about ``weights`` (compared on resume); a file's path and sha256."""
    choice = str(weights)
    if choice.lower() == "imagenet":
        return {"weights": "imagenet", "pretrained": True, "source": "torchvision DenseNet121 IMAGENET1K_V1"}
    if choice.lower() == "none":
        return {"weights": "none", "pretrained": False, "note": "random init, seed 0: untrained features"}
    path = Path(choice).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (weights: 'imagenet', 'none' or a file)")
    return {"weights": str(path), "pretrained": True, "weights_sha256": sha256_file(path)}


def _torchvision():
    """torchvision, imported when the trunk is built or its version recorded."""
    import torchvision  # heavy (torch._dynamo through torchvision.ops): ~1.5 s at start-up

    return torchvision


def torchvision_version() -> str:
    """``torchvision.__version__`` (the build, e.g. ``0.29.1+cu130``), as features.json records it."""
    return _torchvision().__version__


def load_densenet(weights: str | Path = "imagenet") -> tuple[torchvision.models.DenseNet, dict]:
    """(torchvision DenseNet121 in eval mode, :func:`describe_weights`).

    ``"imagenet"``: torchvision IMAGENET1K_V1 (local cache $TORCH_HOME/hub/checkpoints, else a download;
    RuntimeError when neither works). ``"none"``: random init, seed 0. A path: see :func:`_load_file`.
    """
    models = _torchvision().models
    info = describe_weights(weights)
    if info["weights"] == "imagenet":
        try:
            net = models.densenet121(weights="IMAGENET1K_V1", progress=False)
        except Exception as exc:  # offline, HTTP, hash mismatch: all mean "not available"
            raise RuntimeError(
                f"could not get torchvision's ImageNet DenseNet121 weights ({type(exc).__name__}: {exc}). "
                "Without internet, put densenet121-a639ec97.pth in $TORCH_HOME/hub/checkpoints, or use "
                "`--weights none` (random, untrained features) or `--weights /path/to/densenet121.pth` "
                "(a local densenet121 state dict, e.g. a chest-X-ray-pretrained DenseNet)."
            ) from exc
    elif info["weights"] == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = models.densenet121(weights=None)
    else:
        net = models.densenet121(weights=None)
        _load_file(net, Path(info["weights"]))
    return net.eval(), info


def embed(
    net: torchvision.models.DenseNet, x: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """phi: (N, 1, S, S) in [0, 1] -> (N, 1024) float32: 3 channels, ImageNet norm, trunk, ReLU, average
    pool; the trunk under autocast at ``dtype`` (None: fp32)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else nullcontext():
        trunk = net.features(x)
    return F.adaptive_avg_pool2d(F.relu(trunk.float()), 1).flatten(1)

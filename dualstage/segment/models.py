"""U-Net segmenters: the encoder registry, model building, staged unfreezing and input normalisation.

The registry maps our encoder keys to segmentation-models-pytorch (smp 0.6) encoder names and splits
each encoder into the progressive paper's units of unfreezing (Table 1: "decoder only, then block 4,
3, 2, 1, then all"):

- ``stem``: the layers before the first feature output after the input (stride-2 features for most
  encoders, full-resolution conv group for VGG); trained only in the ``all`` phase;
- ``block1`` .. ``block4``: the modules between consecutive feature outputs of smp's encoder
  ``forward`` (strides 4, 8, 16, 32), block 1 the shallowest, block 4 the deepest.

Module prefixes are relative to ``model.encoder`` and match whole dotted path components, so
``block1`` never matches ``block10``. Every encoder parameter belongs to exactly one group
(``tests/test_models.py`` checks every registry entry).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

GROUPS: tuple[str, ...] = ("stem", "block1", "block2", "block3", "block4")
UNFREEZE_PHASES: tuple[str, ...] = ("decoder", "block4", "block3", "block2", "block1", "all")
NORMALIZATION_MODES: tuple[str, ...] = ("dataset", "encoder")
WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")

# Hard-coded: smp's get_preprocessing_params downloads a config file from the Hugging Face hub.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Prefixes = tuple[str, ...]


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry: how to build the encoder and how to split it into unfreezing units."""

    key: str
    smp_name: str  # encoder_name passed to smp.Unet
    family: str
    stages: tuple[Prefixes, Prefixes, Prefixes, Prefixes]  # block 1 (shallowest) .. block 4 (deepest)
    stem: Prefixes
    input_multiple: int = 32
    min_size: int = 64  # 32 runs in eval, but its 1x1 bottleneck breaks train-mode BatchNorm at batch 1
    imagenet: bool = True
    notes: str = ""

    def groups(self) -> dict[str, Prefixes]:
        """Group name (stem, block1..block4) -> module prefixes inside ``model.encoder``."""
        return {"stem": self.stem, **{f"block{i + 1}": s for i, s in enumerate(self.stages)}}


class UnknownEncoderError(KeyError, ValueError):
    """An encoder key not in ENCODERS (a KeyError and a ValueError; the message lists the keys)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- registry


def _resnet(key: str, smp_name: str, family: str, notes: str) -> EncoderSpec:
    stem = ("layer0",) if family == "se_resnext" else ("conv1", "bn1")
    return EncoderSpec(
        key=key,
        smp_name=smp_name,
        family=family,
        stages=(("layer1",), ("layer2",), ("layer3",), ("layer4",)),
        stem=stem,
        notes=notes,
    )


# smp's EfficientNetEncoder (lukemelas implementation) keeps its MBConv blocks in one flat list
# ``_blocks`` and emits features after the block indices ``out_indexes`` (strides 4, 8, 16, 32);
# copied from smp 0.6 encoders/efficientnet.py (a test checks they still agree).
_EFFICIENTNET_OUT_INDEXES: dict[int, tuple[int, int, int, int]] = {
    0: (2, 4, 8, 15),
    1: (4, 7, 15, 22),
    2: (4, 7, 15, 22),
    3: (4, 7, 17, 25),
    4: (5, 9, 21, 31),
    5: (7, 12, 26, 38),
    6: (8, 14, 30, 44),
    7: (10, 17, 37, 54),
}


def _efficientnet(b: int) -> EncoderSpec:
    idx = _EFFICIENTNET_OUT_INDEXES[b]
    bounds = (-1, *idx)
    stages = [tuple(f"_blocks.{i}" for i in range(bounds[k] + 1, bounds[k + 1] + 1)) for k in range(4)]
    # _conv_head/_bn1 exist in smp's encoder but its forward never uses them: put them in block 4.
    stages[3] = (*stages[3], "_conv_head", "_bn1")
    return EncoderSpec(
        key=f"efficientnet-b{b}",
        smp_name=f"efficientnet-b{b}",
        family="efficientnet",
        stages=tuple(stages),  # type: ignore[arg-type]
        stem=("_conv_stem", "_bn0"),
        notes=(
            "smp's own efficientnet-bN (lukemelas port, the one SIIM-ACR 2019 solutions used), not "
            "tu-efficientnet_bN: smp hosts ImageNet weights for all of b0..b7, while timm's "
            "efficientnet_bN has in1k weights only for b0..b4 (b6/b7 only as tf_ variants). Blocks = "
            f"_blocks split after smp's out_indexes {list(idx)}. _conv_head/_bn1 are unused by smp's "
            "forward (they never get gradients) and are counted in block 4."
        ),
    )


def _vgg(key: str, with_bn: bool) -> EncoderSpec:
    # Conv groups of features.* between max-pools (VGG16 config D: 2, 2, 3, 3, 3 convs).
    per_layer = 3 if with_bn else 2  # conv, [bn], relu
    sizes = (2, 2, 3, 3, 3)
    groups: list[Prefixes] = []
    start = 0
    for g, n in enumerate(sizes):
        first = start if g == 0 else start + 1  # groups after the first begin with the max-pool
        stop = first + n * per_layer
        groups.append(tuple(f"features.{i}" for i in range(start, stop)))
        start = stop
    groups[-1] = (*groups[-1], f"features.{start}")  # the last max-pool (stride-32 output)
    return EncoderSpec(
        key=key,
        smp_name=key,
        family="vgg",
        stages=(groups[1], groups[2], groups[3], groups[4]),
        stem=groups[0],
        notes=(
            f"smp 0.6 still has both vgg16 and vgg16_bn; this is {key}. smp's VGG encoder emits the "
            "full-resolution conv group 1 as its first feature: that group is the stem; groups 2..5 "
            "(between max-pools) are blocks 1..4. Building it takes ~2-3 s on CPU (torchvision "
            "initialises the 100M-parameter classifier that smp then deletes)."
        ),
    )


ENCODERS: dict[str, EncoderSpec] = {
    "resnet18": _resnet("resnet18", "resnet18", "resnet", "torchvision ResNet; blocks = layer1..layer4."),
    "resnet34": _resnet("resnet34", "resnet34", "resnet", "torchvision ResNet; blocks = layer1..layer4."),
    **{f"efficientnet-b{b}": _efficientnet(b) for b in range(8)},
    "se_resnext50_32x4d": _resnet(
        "se_resnext50_32x4d",
        "se_resnext50_32x4d",
        "se_resnext",
        "Cadene SENet port; stem = layer0 (conv/bn/relu; smp moves its max-pool to the parameter-free "
        "layer0_pool); blocks = layer1..layer4.",
    ),
    "vgg16": _vgg("vgg16", with_bn=False),
    "vgg16_bn": _vgg("vgg16_bn", with_bn=True),
    "inceptionresnetv2": EncoderSpec(
        key="inceptionresnetv2",
        smp_name="inceptionresnetv2",
        family="inceptionresnetv2",
        stem=("conv2d_1a", "conv2d_2a", "conv2d_2b"),
        stages=(
            ("maxpool_3a", "conv2d_3b", "conv2d_4a"),
            ("maxpool_5a", "mixed_5b", "repeat"),
            ("mixed_6a", "repeat_1"),
            ("mixed_7a", "repeat_2", "block8", "conv2d_7b"),
        ),
        notes=(
            "Cadene port with smp's padding fix (any multiple of 32 works). Blocks = modules between "
            "smp's feature outputs; the module named block8 belongs to block 4."
        ),
    ),
    "xception": EncoderSpec(
        key="xception",
        smp_name="xception",
        family="xception",
        stem=("conv1", "bn1", "relu1", "conv2", "bn2", "relu2"),
        stages=(
            ("block1",),
            ("block2",),
            tuple(f"block{i}" for i in range(3, 12)),
            ("block12", "conv3", "bn3", "relu3", "conv4", "bn4"),
        ),
        notes=(
            "Cadene port. Block 3 = the middle flow (block3..block11, stride 16); block 4 = exit flow "
            "(block12, conv3/bn3, conv4/bn4). Xception's own blockN names are not the paper's blocks."
        ),
    ),
    "densenet121": EncoderSpec(
        key="densenet121",
        smp_name="densenet121",
        family="densenet",
        stem=("features.conv0", "features.norm0", "features.relu0", "features.pool0"),
        stages=(
            ("features.denseblock1", "features.transition1.norm", "features.transition1.relu"),
            (
                "features.transition1.conv",
                "features.transition1.pool",
                "features.denseblock2",
                "features.transition2.norm",
                "features.transition2.relu",
            ),
            (
                "features.transition2.conv",
                "features.transition2.pool",
                "features.denseblock3",
                "features.transition3.norm",
                "features.transition3.relu",
            ),
            (
                "features.transition3.conv",
                "features.transition3.pool",
                "features.denseblock4",
                "features.norm5",
            ),
        ),
        notes=(
            "torchvision DenseNet; block k = denseblock k plus the transition pieces smp's forward runs "
            "with it (the transition's norm/relu come before the skip output, its conv/pool after)."
        ),
    ),
}


def get_spec(encoder: str | EncoderSpec) -> EncoderSpec:
    """The registry entry for a key (or the spec itself); unknown keys raise listing the valid ones."""
    if isinstance(encoder, EncoderSpec):
        return encoder
    try:
        return ENCODERS[encoder]
    except (KeyError, TypeError):
        raise UnknownEncoderError(
            f"unknown encoder {encoder!r}; valid encoders: {', '.join(ENCODERS)}"
        ) from None


def _has_prefix(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def encoder_groups_of(spec: str | EncoderSpec, name: str) -> list[str]:
    """Groups (stem, block1..block4) whose prefixes match a name relative to ``model.encoder``."""
    spec = get_spec(spec)
    return [g for g, prefixes in spec.groups().items() if any(_has_prefix(name, p) for p in prefixes)]


def encoder_group(spec: str | EncoderSpec, name: str) -> str:
    """The one group of an encoder parameter name (relative to ``model.encoder``); else RuntimeError."""
    groups = encoder_groups_of(spec, name)
    if len(groups) != 1:
        raise RuntimeError(
            f"encoder parameter {name!r} of {get_spec(spec).key} belongs to {groups or 'no group'}; "
            "the registry's block mapping must cover every parameter exactly once"
        )
    return groups[0]


# --------------------------------------------------------------------------- building and weights


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
    import segmentation_models_pytorch as smp

    spec = get_spec(encoder)
    choice = "none" if weights is None else str(weights)
    kwargs = dict(encoder_name=spec.smp_name, in_channels=3, classes=classes, activation=None)
    if decoder_channels:
        kwargs["decoder_channels"] = tuple(int(c) for c in decoder_channels)
    if choice.lower() == "none":
        return smp.Unet(encoder_weights=None, **kwargs)
    if choice.lower() == "imagenet":
        if not spec.imagenet:
            raise ValueError(
                f"smp has no ImageNet weights for encoder {spec.key}; use weights: none "
                "or weights: /path/to/weights.pth"
            )
        try:
            model = smp.Unet(encoder_weights="imagenet", **kwargs)
        except Exception as exc:  # hub errors vary (offline, HTTP, cache miss): all mean "not available"
            raise RuntimeError(
                f"could not get ImageNet weights for encoder {spec.key} (smp {spec.smp_name!r}, "
                f"Hugging Face repo smp-hub/{spec.smp_name}.imagenet): {type(exc).__name__}: {exc}. "
                "Without internet, either train from scratch with `weights: none`, or point to a "
                "local file with `weights: /path/to/weights.pth` (a U-Net or encoder state dict; "
                "a pre-filled Hugging Face cache (HF_HOME) also works)."
            ) from exc
        logger.info("encoder %s: ImageNet weights loaded by smp", spec.key)
        return model
    if not Path(choice).expanduser().is_file():
        raise FileNotFoundError(
            f"weights file not found: {choice} (weights must be 'imagenet', 'none' or a local file path)"
        )
    model = smp.Unet(encoder_weights=None, **kwargs)
    report = load_weights(model, choice)
    logger.info("%s", report)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.bin/.safetensors file; unwraps {"model": ...} / {"state_dict": ...}."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
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


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_UNET_PREFIXES = ("encoder.", "decoder.", "segmentation_head.", "classification_head.")


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
    state = _read_state_dict(path)
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for strip in ("module.", "_orig_mod."):
            if key.startswith(strip):
                key = key[len(strip) :]
        cleaned[key] = value
    target = model.state_dict()
    if any(k.startswith(_UNET_PREFIXES) for k in cleaned):
        kind, source, scope = "unet", cleaned, ""
    else:
        kind, scope = "encoder", "encoder."
        source = {}
        for key, value in cleaned.items():
            legacy = _DENSENET_LEGACY.match(key)
            source["encoder." + (legacy.group(1) + legacy.group(2) if legacy else key)] = value
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


def check_size(encoder: str | EncoderSpec, size: int | Sequence[int]) -> None:
    """Raise ValueError (naming encoder, size and the nearest valid sizes) unless size fits the encoder.

    size: one side (square) or (height, width); each must be a multiple of ``input_multiple`` and
    at least ``min_size``.
    """
    spec = get_spec(encoder)
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if len(sides) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    step = spec.input_multiple
    for side in sides:
        if int(side) != side or side < spec.min_size or side % step:
            lower = (int(side) // step) * step
            upper = lower if lower == side else lower + step
            nearest = sorted({max(spec.min_size, lower), max(spec.min_size, upper)})
            raise ValueError(
                f"size {size!r} does not fit encoder {spec.key}: each side must be a multiple of "
                f"{step} and at least {spec.min_size}; nearest valid sizes for {side}: "
                f"{' or '.join(map(str, nearest))}"
            )

"""The encoder registry: smp encoder names, units of unfreezing and valid input sizes.

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

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "GROUPS",
    "ENCODERS",
    "EncoderSpec",
    "UnknownEncoderError",
    "get_spec",
    "encoder_groups_of",
    "encoder_group",
    "check_size",
]

GROUPS: tuple[str, ...] = ("stem", "block1", "block2", "block3", "block4")

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

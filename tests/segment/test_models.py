"""Encoder registry, model building, local weights, staged unfreezing and input normalisation."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from dualstage.runtime.weights import load_weights
from dualstage.segment.models import (
    ENCODERS,
    GROUPS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    UNFREEZE_PHASES,
    build_model,
    check_size,
    encoder_groups_of,
    freeze_bn_of_frozen,
    get_spec,
    normalization,
    set_trainable,
    to_input,
    trainable_groups,
)

FAMILY_EXAMPLES = [
    "resnet34",
    "se_resnext50_32x4d",
    "vgg16",
    "densenet121",
    "efficientnet-b0",
    "efficientnet-b7",
    "inceptionresnetv2",
    "xception",
]


@functools.cache
def meta_model(key: str) -> nn.Module:
    """A U-Net built on the meta device: real module and parameter names, no memory, no init cost."""
    with torch.device("meta"):
        return build_model(key)


def encoder_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.encoder.named_parameters()}


# --------------------------------------------------------------------------- registry


# ~15 s in all on 2 CPU cores; only the VGGs take ~2-3.5 s each (torchvision initialises the 100M-parameter
# classifier smp then deletes). Their structure is still covered by the meta-device tests below.
SLOW_BUILD = {"vgg16", "vgg16_bn"}


@pytest.mark.parametrize(
    "key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_BUILD else k for k in ENCODERS]
)
def test_every_entry_builds_for_real(key: str) -> None:
    model = build_model(key, weights="none")
    spec = ENCODERS[key]
    assert spec.key == key
    assert model.segmentation_head[0].out_channels == 1
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in meta_model(key).named_parameters()]
    assert all(len(encoder_groups_of(spec, n)) == 1 for n in encoder_params(model))


@pytest.mark.parametrize("key", list(ENCODERS))
def test_every_encoder_parameter_in_exactly_one_group(key: str) -> None:
    spec = ENCODERS[key]
    model = meta_model(key)
    sizes = dict.fromkeys(GROUPS, 0)
    for name, param in encoder_params(model).items():
        groups = encoder_groups_of(spec, name)
        assert len(groups) == 1, f"{key}: {name} in {groups}"
        sizes[groups[0]] += param.numel()
    assert all(sizes.values()), f"{key}: empty group in {sizes}"
    # no stale prefix: each names a real module of the encoder
    modules = {n for n, _ in model.encoder.named_modules()}
    for group, prefixes in spec.groups().items():
        for prefix in prefixes:
            assert prefix in modules, f"{key}: {group} prefix {prefix!r} is not a module"
    # deeper blocks are the bigger ones in every family here
    assert sizes["block4"] > sizes["block1"]


def test_registry_agrees_with_smp() -> None:
    from segmentation_models_pytorch.encoders import encoders as smp_encoders

    for spec in ENCODERS.values():
        entry = smp_encoders[spec.smp_name]
        assert spec.imagenet == ("imagenet" in entry["pretrained_settings"])
        assert spec.input_multiple == 32 and spec.min_size % spec.input_multiple == 0
        assert spec.notes
        if spec.family == "efficientnet":
            blocks = [
                [int(p.split(".")[1]) for p in stage if p.startswith("_blocks.")] for stage in spec.stages
            ]
            assert [b[-1] for b in blocks] == list(entry["params"]["out_indexes"]), spec.key
            assert sum(blocks, []) == list(range(blocks[-1][-1] + 1))


def test_unknown_encoder_lists_valid_keys() -> None:
    for exc_type in (KeyError, ValueError):
        with pytest.raises(exc_type) as info:
            build_model("resnet35")
        message = str(info.value)
        assert "resnet35" in message and "resnet34" in message and "se_resnext50_32x4d" in message


# --------------------------------------------------------------------------- staged unfreezing


@pytest.mark.parametrize("key", FAMILY_EXAMPLES)
def test_requires_grad_follows_the_unfreezing_plan(key: str) -> None:
    spec = get_spec(key)
    model = meta_model(key)
    total = sum(p.numel() for p in model.parameters())
    previous = -1
    for phase in UNFREEZE_PHASES:
        counts = set_trainable(model, key, phase)
        assert counts["trainable_params"] + counts["frozen_params"] == total
        assert counts["trainable_params"] > previous
        previous = counts["trainable_params"]
        allowed = set(trainable_groups(phase))
        for name, param in model.named_parameters():
            if name.startswith("encoder."):
                (group,) = encoder_groups_of(spec, name[len("encoder.") :])
                assert param.requires_grad == (group in allowed), (phase, name)
            else:
                assert param.requires_grad, (phase, name)
    assert counts["frozen_params"] == 0  # "all"
    set_trainable(model, spec, "decoder")
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_trainable_groups_plan() -> None:
    assert trainable_groups("decoder") == ()
    assert trainable_groups("block4") == ("block4",)
    assert set(trainable_groups("block2")) == {"block4", "block3", "block2"}
    assert set(trainable_groups("block1")) == {"block4", "block3", "block2", "block1"}
    assert set(trainable_groups("all")) == set(GROUPS)


def test_unknown_unfreeze_lists_valid_phases() -> None:
    with pytest.raises(ValueError) as info:
        set_trainable(meta_model("resnet18"), "resnet18", "block5")
    assert "block5" in str(info.value)
    assert all(phase in str(info.value) for phase in UNFREEZE_PHASES)


def test_freeze_bn_of_frozen_keeps_imagenet_statistics() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18")
    set_trainable(model, "resnet18", "block3")
    model.train()
    count = freeze_bn_of_frozen(model)
    enc = model.encoder
    frozen_bns = [enc.bn1, *[m for m in enc.layer1.modules() if isinstance(m, nn.BatchNorm2d)]]
    frozen_bns += [m for m in enc.layer2.modules() if isinstance(m, nn.BatchNorm2d)]
    live_bns = [m for m in enc.layer3.modules() if isinstance(m, nn.BatchNorm2d)]
    live_bns += [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert count == len(frozen_bns)
    assert all(not m.training for m in frozen_bns)
    assert all(m.training for m in live_bns)
    before = enc.layer1[0].bn1.running_mean.clone()
    before_live = enc.layer3[0].bn1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(enc.layer1[0].bn1.running_mean, before)
    assert not torch.equal(enc.layer3[0].bn1.running_mean, before_live)
    set_trainable(model, "resnet18", "all")
    model.train()
    assert freeze_bn_of_frozen(model) == 0


# --------------------------------------------------------------------------- weights


def test_local_unet_weights_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model("resnet18").eval()
    path = tmp_path / "unet.pth"
    torch.save(source.state_dict(), path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        loaded = build_model("resnet18", weights=str(path)).eval()
        assert torch.equal(loaded(x), expected)
    # training checkpoint with extras and a DataParallel prefix
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    report = load_weights(build_model("resnet18"), wrapped)
    assert report.kind == "unet" and report.missing == 0 and report.unexpected == 0
    assert report.loaded == len(source.state_dict())


def test_local_encoder_only_weights(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = build_model("resnet18")
    state = {k: v.contiguous() for k, v in source.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet classifier the encoder lacks
    path = tmp_path / "encoder.safetensors"
    save_file(state, str(path))
    target = build_model("resnet18")
    report = load_weights(target, path)
    assert report.kind == "encoder"
    assert report.loaded == len(source.encoder.state_dict()) and report.missing == 0
    assert report.unexpected == 1 and "1 unexpected" in str(report)
    loaded = target.encoder.state_dict()
    for name, value in source.encoder.state_dict().items():
        assert torch.equal(value, loaded[name]), name
    built = build_model("resnet18", weights=str(path))
    assert torch.equal(built.encoder.conv1.weight, source.encoder.conv1.weight)


def test_bad_weights_files_raise(tmp_path) -> None:
    unrelated = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3), "bar.bias": torch.zeros(2)}, unrelated)
    with pytest.raises(ValueError, match="no key"):
        build_model("resnet18", weights=str(unrelated))
    two_classes = tmp_path / "two.pth"
    torch.save(build_model("resnet18", classes=2).state_dict(), two_classes)
    with pytest.raises(ValueError, match="wrong shape"):
        build_model("resnet18", weights=str(two_classes))
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("resnet18", weights=str(missing))


def test_imagenet_offline_names_both_alternatives(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    with pytest.raises(RuntimeError) as info:
        build_model("resnet18", weights="imagenet")
    message = str(info.value)
    assert "weights: none" in message and "weights: /path/to/weights.pth" in message
    assert "resnet18" in message


# --------------------------------------------------------------------------- input


def test_normalization_modes() -> None:
    assert normalization("encoder", None) == (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = normalization("dataset", {"mean": 0.5, "std": 0.25})
    assert mean == (0.5, 0.5, 0.5) and std == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="dataset.*encoder"):
        normalization("imagenet", None)
    with pytest.raises(ValueError):
        normalization("dataset", None)
    with pytest.raises(ValueError):
        normalization("dataset", {"mean": 0.5, "std": 0.0})


def test_to_input_shape_and_values() -> None:
    gray = torch.rand(2, 1, 8, 16)
    out = to_input(gray, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (2, 3, 8, 16) and out.dtype == torch.float32
    for c in range(3):
        expected = (gray[:, 0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[:, c], expected)
    flat = to_input(torch.full((1, 1, 4, 4), 0.5), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.equal(flat, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="N, 1, H, W"):
        to_input(torch.rand(2, 3, 8, 8), IMAGENET_MEAN, IMAGENET_STD)


def test_check_size() -> None:
    check_size("resnet34", 512)
    check_size("xception", (1024, 512))
    with pytest.raises(ValueError) as info:
        check_size("resnet34", 500)
    assert "resnet34" in str(info.value) and "500" in str(info.value)
    assert "480" in str(info.value) and "512" in str(info.value)
    with pytest.raises(ValueError, match="64"):
        check_size("efficientnet-b0", 32)
    with pytest.raises(ValueError, match="valid encoders"):
        check_size("resnet", 512)

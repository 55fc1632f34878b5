"""Experiment configuration: YAML files in ``experiments/`` loaded into frozen dataclasses.

A file may name a ``base:`` (another YAML, relative to it) whose values it overrides,
section by section. Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DataConfig",
    "ModelConfig",
    "AugmentConfig",
    "PhaseConfig",
    "TrainConfig",
    "Experiment",
    "load_experiment",
    "from_dict",
    "to_dict",
]


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is prepared."""

    source: str = "phantom"  # "phantom" (generated) or a dataset folder
    layout: str = "auto"
    annotations: str | None = None
    phantom_n: int = 600
    phantom_size: int = 1024
    phantom_layout: str = "siim"
    phantom_seed: int = 0
    phantom_lesion_contrast: float = 1.0  # >1: darker pneumothoraces (learnable in a short CPU demo)
    sizes: tuple[int, ...] = (256, 512, 1024)
    n_folds: int = 10
    split_seed: int = 0
    test_fraction: float = 1068 / 10675  # the progressive paper's split (8643 / 964 / 1068)
    val_fraction: float = 964 / 10675
    workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    """The segmenter: a U-Net over a registry encoder (dualstage.segment.models.ENCODERS)."""

    encoder: str = "resnet34"
    weights: str = "imagenet"  # imagenet | none | path to a local .pth/.safetensors file
    normalization: str = "dataset"  # dataset (prepare's stats.json) | encoder (ImageNet mean/std)
    decoder_channels: tuple[int, ...] | None = None  # None: smp's (256, 128, 64, 32, 16)


@dataclass(frozen=True)
class AugmentConfig:
    """albumentations policy of the progressive paper: moderate geometry, rare intensity changes."""

    shift_limit: float = 0.0625
    scale_limit: float = 0.1
    rotate_limit: float = 10.0
    p_shift_scale_rotate: float = 0.5
    contrast_limit: float = 0.2
    p_contrast: float = 0.1
    gamma_limit: tuple[float, float] = (80.0, 120.0)
    p_gamma: float = 0.1
    brightness_limit: float = 0.2
    p_brightness: float = 0.1
    horizontal_flip: bool = False  # the paper avoids it (left-right asymmetry is meaningful)


@dataclass(frozen=True)
class PhaseConfig:
    """One mini-stage of the curriculum (one row of the progressive paper's Table 1)."""

    name: str = ""
    resolution: int = 512
    unfreeze: str = "all"  # decoder | block4 | block3 | block2 | block1 | all
    loss: Any = "soft_dice"  # a name or a dict spec for dualstage.segment.losses.build_loss
    epochs: int = 1
    schedule: str = "cyclic"  # cyclic (triangular) | plateau | constant
    base_lr: float = 1e-4  # cyclic: lower bound; plateau / constant: the starting LR
    max_lr: float = 1e-3  # cyclic only
    cycle_epochs: float | None = None  # cyclic: epochs per full triangle; None = one triangle per phase
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stopping: int | None = None  # patience in epochs on validation loss; None = off
    batch_size: int | None = None  # None: TrainConfig.batch_size for this resolution
    positive_share: float | None = None  # share of positive images per epoch; None = natural share


@dataclass(frozen=True)
class TrainConfig:
    """How the segmenter is trained: optimiser, batches, precision, phases."""

    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: dict = field(default_factory=lambda: {512: 14, 1024: 3})  # per resolution
    accumulation: int = 1  # gradient accumulation steps per optimizer step
    workers: int = 4
    amp: str = "auto"  # auto (CUDA: bf16/fp16; CPU: fp32) | bf16 | fp16 | off
    channels_last: bool = True
    seed: int = 0
    val_threshold: float = 0.5  # default operating point for the "best" checkpoint's mean Dice
    max_train_images: int | None = None  # subsample train (demos / smoke tests)
    max_val_images: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    phases: tuple = ()


@dataclass(frozen=True)
class ClassifyConfig:
    """Stage two: DenseNet features, XGBoost random search, gate."""

    weights: str = "imagenet"  # DenseNet121: imagenet | none | path to a local state dict
    image_size: int = 224
    n_iter: int = 20  # random-search candidates
    scoring: str = "roc_auc"  # roc_auc | f1 | dice
    max_bin: int = 64
    threads: int | None = None  # XGBoost threads per fit (None: all cores)
    batch_size: int = 16


@dataclass(frozen=True)
class PipelineConfig:
    """What ``python -m dualstage run`` does with this experiment."""

    folds: str = "all"  # main (train/val split only) | all (k fold models) | both
    tta: bool = False  # horizontal-flip test-time augmentation in predict
    lcc: bool = False  # also sweep the largest-connected-component filter
    predict_batch_size: int = 8


@dataclass(frozen=True)
class Experiment:
    """One experiment = one YAML file = one folder ``models/<name>/``."""

    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output_root: str = "models"

    @property
    def folder(self) -> Path:
        return Path(self.output_root) / self.name


def from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys raise ``ValueError`` listing valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        factory = fields[key].default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            kwargs[key] = from_dict(factory, value or {}, f"{where}.{key}")
        elif key == "phases":
            kwargs[key] = tuple(
                from_dict(PhaseConfig, v, f"{where}.phases[{i}]") for i, v in enumerate(value or [])
            )
        elif isinstance(value, list) and "tuple" in str(fields[key].type):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain YAML/JSON-able values (the resolved config written beside runs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = values.pop("base", None)
    return _merge(_read_yaml(path.parent / base), values) if base else values


def load_experiment(path: str | Path) -> Experiment:
    """Load ``experiments/<name>.yaml`` (following ``base:``); the name defaults to the file stem."""
    path = Path(path)
    values = _read_yaml(path)
    values.setdefault("name", path.stem)
    return from_dict(Experiment, values, str(path))

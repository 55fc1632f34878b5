"""Experiment options: YAML files in ``experiments/`` loaded into frozen, checked dataclasses.

One section per step (``data``, ``model``, ``train``, ``predict``, ``sweep``, ``features``,
``tune``, ``gate``, ``report``). A file may name a ``base:`` (another YAML, relative to it)
whose values it overrides, section by section. Unknown keys, wrong types, values out of range
and unknown choices are errors naming the key, the value and the valid choices, raised when the
file is loaded; command-line flags only override the loaded values.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dualstage.artifacts.layout import ExperimentDir
from dualstage.config_check import ConfigError, check_value

__all__ = [
    "DataConfig",
    "ModelConfig",
    "AugmentConfig",
    "PhaseConfig",
    "TrainConfig",
    "PredictConfig",
    "SweepConfig",
    "FeaturesConfig",
    "TuneConfig",
    "GateConfig",
    "ReportConfig",
    "Experiment",
    "ConfigError",
    "load_experiment",
    "from_dict",
    "to_dict",
    "override",
]


PAPER_TEST_FRACTION = 1068 / 10675  # the papers' 81 / 9 / 10 holdout (SIIM-ACR stage 1 train)
PAPER_VAL_FRACTION = 964 / 10675


def _opt(default: Any, **meta: Any) -> Any:
    """A field with check metadata (``choices``, ``min``, ``max``, ``positive``, ``or_path``)."""
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how ``prepare`` reads it."""

    source: str = "phantom"  # "phantom" (generated) or a dataset folder
    layout: str = _opt("auto", choices=("auto", "siim", "png", "folders"))
    annotations: str | None = None
    phantom_n: int = _opt(600, min=4)
    phantom_size: int = _opt(1024, min=32, max=4096)
    phantom_layout: str = _opt("siim", choices=("siim", "png"))
    phantom_seed: int = 0
    phantom_lesion_contrast: float = _opt(1.0, positive=True)
    phantom_subtle_share: float = _opt(0.0, min=0.0, max=1.0)  # positives at the default look
    sizes: tuple[int, ...] = _opt((256, 512, 1024), min=32, max=4096)
    n_folds: int = _opt(10, min=2, max=100)
    split_seed: int = 0
    test_fraction: float = _opt(PAPER_TEST_FRACTION, positive=True, max=0.9)
    val_fraction: float = _opt(PAPER_VAL_FRACTION, positive=True, max=0.9)
    workers: int = _opt(2, min=0)
    # pixels of one image (frame), checked on its header before decoding (dualstage.data.limits):
    # 32 M admits 4,300 x 4,300 DR, 4,096 x 5,600 and 4,800 x 6,000 mammography, 3,000 x 9,000 stitched DR
    max_pixels: int = _opt(32_000_000, positive=True)


@dataclass(frozen=True)
class ModelConfig:
    """The segmenter: a U-Net over a registry encoder (dualstage.segment.models.ENCODERS)."""

    encoder: str = "resnet34"  # a key of dualstage.segment.encoders.ENCODERS (checked there)
    weights: str = _opt("imagenet", choices=("imagenet", "none"), or_path=True)
    normalization: str = _opt("dataset", choices=("dataset", "encoder"))
    decoder_channels: tuple[int, ...] | None = _opt(None, positive=True)


@dataclass(frozen=True)
class AugmentConfig:
    """albumentations policy of the progressive paper: moderate geometry, rare intensity changes."""

    shift_limit: float = _opt(0.0625, min=0.0, max=1.0)
    scale_limit: float = _opt(0.1, min=0.0, max=1.0)
    rotate_limit: float = _opt(10.0, min=0.0, max=180.0)
    p_shift_scale_rotate: float = _opt(0.5, min=0.0, max=1.0)
    contrast_limit: float = _opt(0.2, min=0.0, max=1.0)
    p_contrast: float = _opt(0.1, min=0.0, max=1.0)
    gamma_limit: tuple[float, ...] = _opt((80.0, 120.0), positive=True)
    p_gamma: float = _opt(0.1, min=0.0, max=1.0)
    brightness_limit: float = _opt(0.2, min=0.0, max=1.0)
    p_brightness: float = _opt(0.1, min=0.0, max=1.0)
    horizontal_flip: bool = False  # the paper avoids it (left-right asymmetry is meaningful)


@dataclass(frozen=True)
class PhaseConfig:
    """One mini-stage of the curriculum (one row of the progressive paper's Table 1)."""

    name: str = ""
    resolution: int = _opt(512, min=32, max=4096)
    unfreeze: str = _opt("all", choices=("decoder", "block4", "block3", "block2", "block1", "all"))
    loss: Any = "soft_dice"  # a name or a dict spec for dualstage.segment.losses.build_loss
    epochs: int = _opt(1, positive=True)
    schedule: str = _opt("cyclic", choices=("cyclic", "plateau", "constant"))
    base_lr: float = _opt(1e-4, positive=True)  # cyclic: lower bound; plateau / constant: starting LR
    max_lr: float = _opt(1e-3, positive=True)  # cyclic only
    cycle_epochs: float | None = _opt(None, positive=True)  # None = one triangle per phase
    plateau_factor: float = _opt(0.5, positive=True, max=1.0)
    plateau_patience: int = _opt(3, min=0)
    early_stopping: int | None = _opt(None, positive=True)  # patience in epochs; None = off
    batch_size: int | None = _opt(None, positive=True)  # None: TrainConfig.batch_size[resolution]
    positive_share: float | None = _opt(None, min=0.0, max=1.0)  # None = natural share


@dataclass(frozen=True)
class TrainConfig:
    """How the segmenters are trained: which models, optimiser, batches, precision, phases."""

    folds: str = _opt("all", choices=("main", "all", "both"))  # main model, k fold models, or both
    optimizer: str = _opt("adam", choices=("adam", "adamw"))
    weight_decay: float = _opt(0.0, min=0.0)
    batch_size: dict = field(default_factory=lambda: {512: 14, 1024: 3})  # per resolution
    accumulation: int = _opt(1, positive=True)
    workers: int = _opt(4, min=0)
    amp: str = _opt("auto", choices=("auto", "bf16", "fp16", "off"), bools={False: "off", True: "auto"})
    channels_last: bool = True
    seed: int = 0
    val_threshold: float = _opt(0.5, min=0.0, max=1.0)  # the default operating point ("no gate")
    checkpoint: str = _opt("last", choices=("last", "best"))  # fixed schedules keep the last epoch
    max_train_images: int | None = _opt(None, positive=True)
    max_val_images: int | None = _opt(None, positive=True)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    phases: tuple[PhaseConfig, ...] = ()


@dataclass(frozen=True)
class PredictConfig:
    """``segment predict``: probability maps for every prediction set."""

    tta: bool = False  # horizontal-flip test-time augmentation
    checkpoint: str | None = _opt(None, choices=("best", "last", "both"))  # None: train.checkpoint
    batch_size: int = _opt(8, positive=True)
    workers: int = _opt(0, min=0)
    precision: str = _opt("auto", choices=("auto", "fp32", "bf16"))  # auto: bf16 where measured faster


@dataclass(frozen=True)
class SweepConfig:
    """``segment sweep``: operating points chosen on oof (else val)."""

    select_on: str = _opt("auto", choices=("auto", "oof", "val"))
    lcc: bool = False  # also sweep the largest-connected-component filter


@dataclass(frozen=True)
class FeaturesConfig:
    """``classify features``: DenseNet121 features of image and map."""

    weights: str = _opt("imagenet", choices=("imagenet", "none"), or_path=True)
    image_size: int = _opt(224, min=32, max=2048)
    batch_size: int = _opt(16, positive=True)
    workers: int = _opt(0, min=0)
    precision: str = _opt("auto", choices=("auto", "fp32", "bf16"))  # as predict.precision


@dataclass(frozen=True)
class TuneConfig:
    """``classify tune``: XGBoost random search on the out-of-fold features."""

    n_iter: int = _opt(20, positive=True)
    scoring: str = _opt("roc_auc", choices=("roc_auc", "f1", "dice"))
    dice_rule: str = _opt("threshold", choices=("threshold", "threshold_area"))
    max_bin: int = _opt(64, min=2)
    threads: int | None = _opt(None, positive=True)
    n_jobs: int = _opt(1, positive=True)
    seed: int = 0
    # halving: successive halving of the same random candidates on boosting rounds (classify.halving);
    # random: RandomizedSearchCV, every candidate at full rounds on every inner fold
    search: str = _opt("halving", choices=("halving", "random"))
    halving_eta: int = _opt(3, min=2)
    halving_min_rounds: int = _opt(10, positive=True)
    # cross-fitting: the other K-1 folds grouped into at most this many inner folds (fold index mod n)
    inner_folds: int = _opt(3, min=2)
    table2: bool = True  # cross-fitted Table 2 (4 more models per fold; the paper comparison)


@dataclass(frozen=True)
class GateConfig:
    """``classify gate``: which classifier gate modes are fitted and applied."""

    modes: tuple[str, ...] = _opt(
        ("classifier", "classifier_and_area"), choices=("classifier", "classifier_and_area")
    )
    threads: int | None = _opt(None, positive=True)


@dataclass(frozen=True)
class ReportConfig:
    """``report``: bootstrap and gallery settings."""

    resamples: int = _opt(2000, positive=True)
    seed: int = 0
    gallery: int = _opt(8, min=0)
    paper_table: str | None = _opt(None, choices=("progressive", "dualstage"))  # a row of a paper's table


@dataclass(frozen=True)
class Experiment:
    """One experiment = one YAML file = one folder ``<output_root>/<name>/``."""

    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    output_root: str = "models"

    @property
    def folder(self) -> Path:
        return Path(self.output_root) / self.name

    @property
    def dir(self) -> ExperimentDir:
        """The owner of every path under the experiment folder."""
        return ExperimentDir(self.folder)


def _check_batch_sizes(values: dict, where: str) -> dict:
    out = {}
    for key, size in values.items():
        try:
            res = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: keys are resolutions (integers), got {key!r}") from None
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"{where}[{key}]: expected a positive integer, got {size!r}")
        out[res] = size
    return out


def from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``values`` with every value checked (ConfigError naming the key)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}: " if where else ""  # the top level has no key path
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}expected a mapping with keys {sorted(fields)}, got {values!r}")
    unknown = sorted(str(k) for k in set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        f, at = fields[key], f"{where}.{key}" if where else key
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            kwargs[key] = from_dict(factory, {} if value is None else value, at)
        elif key == "phases":
            if not isinstance(value, list):
                raise ConfigError(f"{at}: expected a list of phases, got {value!r}")
            kwargs[key] = tuple(from_dict(PhaseConfig, v, f"{at}[{i}]") for i, v in enumerate(value))
        elif key == "batch_size" and cls is TrainConfig:
            kwargs[key] = _check_batch_sizes(check_value(f, dict, value, at), at)
        else:
            kwargs[key] = check_value(f, hints[key], value, at)
    obj = cls(**kwargs)
    if cls is PhaseConfig:
        _check_phase(obj, where)
    return obj


def _check_phase(phase: PhaseConfig, where: str) -> None:
    """The phase's own consistency; its loss spec is the loss registry's to check (the commands'
    :func:`dualstage.commands.experiment.check_registry_keys`)."""
    if phase.schedule == "cyclic" and phase.max_lr < phase.base_lr:
        raise ConfigError(f"{where}: max_lr {phase.max_lr} is below base_lr {phase.base_lr}")


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain YAML/JSON-able values (the resolved config written beside runs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def override(exp: Experiment, section: str, **values: Any) -> Experiment:
    """``exp`` with ``section``'s keys replaced by the non-None ``values`` (command-line flags), checked."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return exp
    merged = {**to_dict(getattr(exp, section)), **given}
    return dataclasses.replace(exp, **{section: from_dict(type(getattr(exp, section)), merged, section)})


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{at}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {values!r}")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), values)


def load_experiment(path: str | Path, output_root: str | None = None) -> Experiment:
    """Load ``experiments/<name>.yaml`` (following ``base:``); the name defaults to the file stem."""
    path = Path(path)
    values = _read_yaml(path)
    values.setdefault("name", path.stem)
    if output_root is not None:
        values["output_root"] = output_root
    try:
        return from_dict(Experiment, values, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

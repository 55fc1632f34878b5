"""Opening an experiment the same way in every command: a YAML file or a ``models/<exp>`` folder.

``--exp experiments/demo.yaml`` loads and checks the YAML; ``--exp models/demo`` reads the resolved
config that every step saves as ``models/<exp>/experiment.json`` (so a folder can be predicted,
re-tuned or re-reported without its YAML). Command-line flags then override single values.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from importlib import metadata
from pathlib import Path

from dualstage.artifacts.layout import EXPERIMENT_FILE, ExperimentDir
from dualstage.config import ConfigError, Experiment, from_dict, load_experiment, override, to_dict
from dualstage.core.io import write_json_atomic
from dualstage.data.limits import set_max_pixels
from dualstage.segment.encoders import get_spec
from dualstage.segment.losses import build_loss

__all__ = [
    "open_experiment",
    "record_experiment",
    "add_experiment_argument",
    "add_progress_argument",
    "add_shard_arguments",
    "add_max_pixels_argument",
    "with_max_pixels",
]

LIBRARIES = (
    "dualstage",
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "xgboost",
    "scikit-learn",
    "numpy",
    "pandas",
    "pydicom",
    "albumentations",
)


def open_experiment(arg: str | Path, data: str | None = None) -> Experiment:
    """The experiment named by ``arg`` (a YAML file or an experiment folder); ``data``: data.source."""
    path = Path(arg)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        exp = load_experiment(path)
    elif path.is_dir() and (path / EXPERIMENT_FILE).is_file():
        values = dict(ExperimentDir(path).read_config())
        values.update(name=path.name, output_root=str(path.parent))
        try:
            exp = from_dict(Experiment, values, "")
        except ConfigError as exc:
            raise ConfigError(f"{path / EXPERIMENT_FILE}: {exc}") from None
    elif path.is_dir():
        raise FileNotFoundError(
            f"--exp {path}: no {EXPERIMENT_FILE} in this folder; give the experiment's YAML "
            "(experiments/<name>.yaml) or a folder made by `python -m dualstage run`"
        )
    else:
        raise FileNotFoundError(f"--exp {path}: neither an experiment YAML file nor an experiment folder")
    if data is not None:
        exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, source=str(data)))
    try:
        check_registry_keys(exp)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    set_max_pixels(exp.data.max_pixels)  # every reader of a user's image in this process
    return exp


def check_registry_keys(exp: Experiment) -> None:
    """The options that name registry keys, checked by their registries: the model's encoder
    (:data:`dualstage.segment.encoders.ENCODERS`) and each phase's loss spec
    (:func:`dualstage.segment.losses.build_loss`). ConfigError naming the key and the valid ones."""
    try:
        get_spec(exp.model.encoder)
    except ValueError as exc:
        raise ConfigError(f"model.encoder: {exc}") from None
    for i, phase in enumerate(exp.train.phases):
        try:
            build_loss(phase.loss)
        except ValueError as exc:
            raise ConfigError(f"train.phases[{i}].loss: {exc}") from None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def record_experiment(exp: Experiment) -> Path:
    """Write ``models/<exp>/experiment.json`` (resolved config + library versions) when it changed."""
    d = exp.dir
    config = to_dict(exp)
    config.pop("output_root", None)
    if d.read_config() == config:
        return d.experiment_file
    return write_json_atomic(d.experiment_file, {"config": config, "versions": _versions()})


def add_experiment_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--exp``: experiments/<name>.yaml or models/<name> (the same in every command)."""
    parser.add_argument(
        "--exp", required=required, help="experiments/<name>.yaml, or an experiment folder models/<name>"
    )


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bars or progress lines (the same in every command)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N``: the pixel limit of one image (``data.max_pixels``; the same in every command)."""
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse (a rejected.csv row) an image whose header declares more pixels than N "
        "(default data.max_pixels: 32,000,000)",
    )


def with_max_pixels(exp: Experiment, value: int | None) -> Experiment:
    """``exp`` with ``data.max_pixels`` overridden by ``--max-pixels`` (when given), in force here."""
    exp = override(exp, "data", max_pixels=value)
    set_max_pixels(exp.data.max_pixels)
    return exp


def add_shard_arguments(parser: argparse.ArgumentParser, outputs: str) -> None:
    """``--shard I/N`` and ``--merge`` (:mod:`dualstage.commands.shards`); ``outputs``: what merge writes."""
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="only share I of N of the images (0 <= I < N), e.g. 0/2 and 1/2 in two processes; then --merge "
        "(under torchrun: rank/world, merged by rank 0)",
    )
    parser.add_argument("--merge", action="store_true", help=f"merge finished --shard runs into {outputs}")

"""Provenance: resolved config, library versions, input hashes, where each number comes from, dates."""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib import metadata
from pathlib import Path

from dualstage.gates import CLASSIFIER_GATES
from dualstage.io import sha256_file

__all__ = ["provenance", "sha256"]

LIBRARIES = ("dualstage", "numpy", "pandas", "scikit-learn", "xgboost", "matplotlib", "scipy", "torch")
DATED = (
    "prepared/manifest.csv",
    "operating_point.json",
    "classifier/model.ubj",
    "classifier/gate.json",
    "predictions/test/histograms.npz",
    *(f"final/test/{mode}/decisions.csv" for mode in CLASSIFIER_GATES),
)


def sha256(path: Path) -> str | None:
    """Hex SHA-256 of a file, None when it does not exist."""
    return sha256_file(path) if path.is_file() else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def _configs(exp: Path) -> tuple[dict | None, list[str], dict | None]:
    """(the resolved config of ``main`` or the first model, "model (differing keys)" for the others
    whose config differs from it, its versions.json)."""
    paths = sorted((exp / "segmenter").glob("*/config.json"))
    if not paths:
        return None, [], None
    main = next((p for p in paths if p.parent.name == "main"), paths[0])
    cfg = json.loads(main.read_text())
    differ = []
    for p in paths:
        other = json.loads(p.read_text())
        keys = sorted(k for k in {*cfg, *other} if cfg.get(k) != other.get(k))
        if keys:
            differ.append(f"{p.parent.name} ({', '.join(keys)})")
    versions = main.parent / "versions.json"
    return cfg, differ, json.loads(versions.read_text()) if versions.is_file() else None


def provenance(exp: Path, cmp: dict | None) -> dict:
    """JSON-able provenance of a report on ``exp`` (``cmp``: the comparison, or None when not run)."""
    cfg, differ, versions = _configs(exp)
    models = sorted(p.parent.name for p in (exp / "segmenter").glob("*/config.json"))
    gate = exp / "classifier" / "gate.json"
    gate_json = json.loads(gate.read_text()) if gate.is_file() else {}
    return {
        "experiment": exp.name,
        "experiment_dir": str(exp.resolve()),
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "numbers": {
            "split": "test (held out: never used to choose an operating point)",
            "n_images": None if cmp is None else cmp["n"],
            "model": "predictions/test, fold_model: "
            + (", ".join(cmp["fold_model"]) if cmp and cmp["fold_model"] else "?"),
            "operating_points_chosen_on": None if cmp is None else cmp["chosen_on"],
            "classifier_threshold_chosen_on": sorted(
                {v.get("chosen_on", "?") for k, v in gate_json.items() if isinstance(v, dict)}
            ),
            "bootstrap": None
            if cmp is None
            else f"{cmp['resamples']} resamples of test images with replacement, seed {cmp['seed']}, "
            "95 % percentile intervals; differences paired (same resamples)",
        },
        "inputs_sha256": {
            "prepared/manifest.csv": sha256(exp / "prepared" / "manifest.csv"),
            "prepared/masks.csv": sha256(exp / "prepared" / "masks.csv"),
            "predictions/test/histograms.npz": sha256(exp / "predictions" / "test" / "histograms.npz"),
            "classifier/model.ubj": sha256(exp / "classifier" / "model.ubj"),
        },
        "segmenter_models": models,
        "configs_differ_from_first": differ,
        "training_versions": versions,
        "report_versions": {"python": platform.python_version(), **{n: _version(n) for n in LIBRARIES}},
        "dates": {p: _iso((exp / p).stat().st_mtime) for p in DATED if (exp / p).is_file()},
        "config": cfg,
    }

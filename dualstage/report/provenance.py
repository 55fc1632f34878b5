"""Provenance: resolved config, library versions, input hashes, where each number comes from, dates.

The hashed inputs are the files the comparison read, by protocol: cross-fitted (every study's
out-of-fold map, each fold's operating points and classifier files) or the holdout test split.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd

from dualstage.artifacts.gates import CLASSIFIER_GATES
from dualstage.artifacts.layout import ExperimentDir
from dualstage.core.io import sha256_file
from dualstage.report.document import Code, Note, Paragraph, Section, Table

__all__ = ["provenance", "provenance_section", "sha256", "inputs_read"]

LIBRARIES = ("dualstage", "numpy", "pandas", "scikit-learn", "xgboost", "matplotlib", "scipy", "torch")
DATA = ("prepared/manifest.csv", "prepared/masks.csv", "prepared/splits.csv")
HOLDOUT = (
    "predictions/test/histograms.npz",
    "operating_point.json",
    "classifier/model.ubj",
    "classifier/gate.json",
    *(f"final/test/{mode}/decisions.csv" for mode in CLASSIFIER_GATES),
)
FOLD_FILES = (
    "operating_point.json",
    "classifier/model.ubj",
    "classifier/gate.json",
    "classifier/probabilities.csv",
)
SPLIT_TEXT = {
    "crossfit": "none held out: every study scored once, cross-fitted (fold model k's out-of-fold map of "
    "each study of fold k, with rules and classifier fitted on the other folds only)",
    "test": "test (held out: never used to choose an operating point)",
}


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


def inputs_read(exp: Path, split: str) -> list[str]:
    """Paths (relative to ``exp``) of the files a comparison of protocol ``split`` reads: for
    "crossfit" every fold's operating points and classifier files and the out-of-fold histograms,
    for "test" the holdout files; the data's manifest, masks and splits for both."""
    if split != "crossfit":
        return [*DATA, *HOLDOUT]
    d = ExperimentDir(exp)
    folds = [f"crossfit/fold_{k}/{f}" for k in d.crossfit_folds() for f in FOLD_FILES]
    return [
        *DATA,
        "predictions/oof/histograms.npz",
        "predictions/oof/index.csv",
        *folds,
        "crossfit/gate_thresholds.json",
    ]


def _gate_chosen_on(exp: Path, split: str) -> list[str]:
    """Where the classifier gate thresholds were chosen (each gate.json's ``chosen_on``)."""
    paths = [f for f in inputs_read(exp, split) if f.endswith("gate.json")]
    found = set()
    for rel in paths:
        g = json.loads((exp / rel).read_text()) if (exp / rel).is_file() else {}
        found |= {v.get("chosen_on", "?") for v in g.values() if isinstance(v, dict)}
    return sorted(found)


def normalisation_note(exp: Path) -> str | None:
    """What ``prepared/stats.json`` spans and why that is acceptable (None when it is not used)."""
    path = exp / "prepared" / "stats.json"
    model = ExperimentDir(exp).read_config().get("model") or {}
    if not path.is_file() or model.get("normalization", "dataset") != "dataset":
        return None
    stats = json.loads(path.read_text())
    return (
        f"Input normalisation: prepared/stats.json (pixel mean {stats.get('mean', float('nan')):.4f}, std "
        f"{stats.get('std', float('nan')):.4f}, pixels / 255) is one pair of numbers over all "
        f"{stats.get('n_images', '?')} train-split studies, every fold's included, so fold model k is "
        "normalised with statistics that include fold k's images. Acceptable here: the statistic is "
        "label-free (no mask or presence enters it), one study moves it by about 1/n, and every gate is "
        "scored on the same maps, so it cannot favour one gate over another. Per-fold statistics would need "
        "prepare, training and inference to carry each fold's own pair; not done."
    )


def provenance(exp: Path, cmp: dict | None) -> dict:
    """JSON-able provenance of a report on ``exp`` (``cmp``: the comparison, or None when not run)."""
    cfg, differ, versions = _configs(exp)
    models = sorted(p.parent.name for p in (exp / "segmenter").glob("*/config.json"))
    split = "test" if cmp is None else cmp["split"]
    pred_set = "oof" if split == "crossfit" else "test"
    read = inputs_read(exp, split)
    return {
        "experiment": exp.name,
        "experiment_dir": str(exp.resolve()),
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "numbers": {
            "split": SPLIT_TEXT.get(split, split),
            "n_images": None if cmp is None else cmp["n"],
            "model": f"predictions/{pred_set}, fold_model: "
            + (", ".join(cmp["fold_model"]) if cmp and cmp["fold_model"] else "?"),
            "operating_points_chosen_on": None if cmp is None else cmp["chosen_on"],
            "classifier_threshold_chosen_on": _gate_chosen_on(exp, split),
            "bootstrap": None
            if cmp is None
            else f"{cmp['resamples']} resamples of the {cmp['n']} scored studies with replacement, seed "
            f"{cmp['seed']}, 95 % percentile intervals; differences paired (same resamples)",
        },
        "inputs_sha256": {rel: sha256(exp / rel) for rel in read},
        "normalisation": normalisation_note(exp),
        "segmenter_models": models,
        "configs_differ_from_first": differ,
        "training_versions": versions,
        "report_versions": {"python": platform.python_version(), **{n: _version(n) for n in LIBRARIES}},
        "dates": {p: _iso((exp / p).stat().st_mtime) for p in read if (exp / p).is_file()},
        "config": cfg,
    }


def provenance_section(prov: dict) -> Section:
    """The report's Provenance section from :func:`provenance`'s record."""
    n = prov["numbers"]
    rows = [
        ("split", n["split"]),
        ("studies scored", n["n_images"]),
        ("model", n["model"]),
        ("operating points chosen on", n["operating_points_chosen_on"]),
        ("classifier threshold chosen on", ", ".join(n["classifier_threshold_chosen_on"]) or "-"),
        ("bootstrap", n["bootstrap"]),
        *((f"sha256 {k}", v or "missing") for k, v in prov["inputs_sha256"].items()),
        ("report generated (UTC)", prov["generated"]),
        *((f"modified (UTC) {k}", v) for k, v in prov["dates"].items()),
        ("segmenter models", ", ".join(prov["segmenter_models"]) or "-"),
        ("report libraries", ", ".join(f"{k} {v}" for k, v in prov["report_versions"].items() if v)),
        (
            "training libraries",
            ", ".join(f"{k} {v}" for k, v in (prov["training_versions"] or {}).items()) or "-",
        ),
    ]
    frame = pd.DataFrame(rows, columns=["Item", "Value"]).astype(str)
    sec = Section("Provenance", [Table("provenance", "Where the numbers come from", frame)])
    if prov.get("normalisation"):
        sec.blocks.append(Paragraph(prov["normalisation"]))
    if prov["configs_differ_from_first"]:
        sec.blocks.append(
            Note(
                "resolved configs differ from the first model's in: "
                + "; ".join(prov["configs_differ_from_first"])
            )
        )
    if prov["config"] is not None:
        sec.blocks.append(
            Code("Resolved config (segmenter/*/config.json)", json.dumps(prov["config"], indent=2))
        )
    else:
        sec.blocks.append(Note("not run: no segmenter/*/config.json"))
    return sec

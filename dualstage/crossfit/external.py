"""External validation: a trained experiment's gates on another annotated set, frozen and re-chosen.

The deployed pipeline is the one new radiographs get (``gate apply --set new``): the main model with
its rules and classifier (``train.folds: main | both``), else every fold pipeline k (fold model k,
its operating points, classifier k and its gate threshold) and a pixel-wise majority vote.

* **Frozen**: every gate exactly as chosen on the source data (pixel rule, minimum area, classifier
  and its threshold), applied to the external set's maps. With ``area="spacing"`` a minimum area
  keeps its physical size: the source's min area (1024-grid px) x the source's median mm^2 per grid
  pixel gives mm^2, which study i of the external set reads back in its own grid pixels (a factor
  per study, :func:`area_factors`). With ``area="grid"`` the area counts on the common 1024 x 1024
  grid, a share of the image, as everywhere in the package.
* **Re-chosen**: the same gates with their operating points chosen on the external set itself,
  cross-fitted over its own patient-grouped folds: for the studies of external fold j, each
  pipeline's rules come from :func:`dualstage.crossfit.rules.fold_rules` on the other folds'
  histograms of that pipeline's maps, and each classifier gate's threshold from
  :func:`dualstage.classify.gate.choose_gate` on the other folds' probabilities (the classifier
  model itself stays the source's). No study is scored by a choice made on it.

:func:`study_masks` is the one place a choice becomes final masks; :func:`evaluate_set` writes
``external/<set>/counts.csv`` (per study: truth, and per variant and gate: intersection, area,
decision, mask digest) and ``external.json`` (every rule and threshold applied, the area rule).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dualstage.artifacts.gates import GATES, GateSpec
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.classify.gate import GATE_MODES, choose_gate, load_gate
from dualstage.core import gating
from dualstage.core.progress import progress as progress_iter
from dualstage.crossfit.rules import fold_rules
from dualstage.segment.sweep import make_grids

__all__ = [
    "Pipeline",
    "SetData",
    "deployed_pipelines",
    "frozen_choice",
    "rechosen_choices",
    "study_masks",
    "area_factors",
    "AREA_MODES",
]

AREA_MODES = ("auto", "grid", "spacing")
Choice = list[dict]  # per pipeline: {"rules": {gate key: rule}, "thresholds": {mode: threshold}}


@dataclass(frozen=True)
class Pipeline:
    """One deployed pipeline: its segmenter model, operating points, gate file and classifier folder."""

    name: str  # "main" or "fold_<k>" (the segmenter model)
    rules: OperatingPoints
    gate: dict  # gate.json: {mode: {threshold, pixel_rule, ...}}
    classifier: Path

    def set_name(self, name: str) -> str:
        """The external set's prediction / feature set of this pipeline (as for new images)."""
        return name if self.name == "main" else f"{name}_{self.name}"


def deployed_pipelines(exp: ExperimentDir, folds_setting: str) -> list[Pipeline]:
    """The pipelines new images go through: main (``train.folds`` main | both), else every fold."""
    if folds_setting in ("main", "both") and exp.operating_point.is_file():
        return [
            Pipeline(
                "main", OperatingPoints.read(exp.operating_point), load_gate(exp.gate_file), exp.classifier
            )
        ]
    folds = exp.crossfit_folds()
    if not folds:
        raise FileNotFoundError(
            f"{exp.root}: no deployed rules (operating_point.json or crossfit/fold_*); "
            "run the experiment first"
        )
    out = []
    for k in folds:
        d = exp.crossfit_fold(k)
        op = OperatingPoints.read(d / "operating_point.json")
        out.append(Pipeline(f"fold_{k}", op, load_gate(d / "classifier" / "gate.json"), d / "classifier"))
    return out


class SetData(NamedTuple):
    """The external set as the choices need it; every array (N,) in the order of ``ids``."""

    ids: np.ndarray  # (N,) str
    folds: np.ndarray  # (N,) int, the external set's own patient-grouped folds
    hists: list[gating.Histograms]  # per pipeline, rows in the order of ids
    probs: list[np.ndarray | None]  # per pipeline classifier probability (N,), None: no classifier
    read_map: Callable[[int, str], np.ndarray]  # (pipeline index, image id) -> uint8 map (H, W)
    truth: Callable[[str, int, int], np.ndarray]  # (image id, H, W) -> bool mask


def usable_gates(pipes: list[Pipeline], has_probs: bool) -> tuple[list[GateSpec], dict[str, str]]:
    """(gates every pipeline can apply, {gate label: why not} for the others)."""
    gates, skipped = [], {}
    for spec in GATES:
        if any(spec.rule not in p.rules.rules for p in pipes):
            skipped[spec.label] = f"not run: no {spec.rule!r} rule in the source's operating points"
        elif spec.classifier and (not has_probs or any(spec.key not in p.gate for p in pipes)):
            skipped[spec.label] = "not run: the source has no fitted classifier gate of this mode"
        else:
            gates.append(spec)
    return gates, skipped


def frozen_choice(pipes: list[Pipeline], gates: list[GateSpec]) -> Choice:
    """Every pipeline's rules and gate thresholds exactly as chosen on the source."""
    return [
        {
            "rules": {g.key: p.rules.rule(g.rule) for g in gates},
            "thresholds": {g.key: float(p.gate[g.key]["threshold"]) for g in gates if g.classifier},
        }
        for p in pipes
    ]


def rechosen_choices(
    data: SetData, gates: list[GateSpec], default_threshold: float, progress: bool = False
) -> dict[int, Choice]:
    """{external fold j: every pipeline's rules and thresholds chosen on the other external folds only}."""
    grids = make_grids()
    out = {}
    folds = sorted(np.unique(data.folds).tolist())
    for j in progress_iter(folds, desc="re-choose per external fold", enabled=progress):
        rows = data.folds != j
        choice = []
        for p, hist in enumerate(data.hists):
            op, _ = fold_rules(hist, data.folds, j, grids, default_threshold)
            thresholds = {}
            for g in (g for g in gates if g.classifier):
                part = hist.hist[rows], hist.height[rows], hist.width[rows]
                counts = np.stack(gating.rule_counts(*part, op.rule(GATE_MODES[g.key])))
                thresholds[g.key] = choose_gate(data.probs[p][rows], counts)["threshold"]
            choice.append({"rules": {g.key: op.rule(g.rule) for g in gates}, "thresholds": thresholds})
        out[int(j)] = choice
    return out


def _scaled(rule: dict, factor: float) -> dict:
    """``rule`` with its minimum area times ``factor`` (the same physical area on another grid)."""
    return {**rule, "min_area": float(rule["min_area"]) * factor} if "min_area" in rule else rule


def study_masks(
    maps: list[np.ndarray],
    probs: list[float | None],
    choice: Choice,
    gates: list[GateSpec],
    factor: float = 1.0,
) -> dict[str, tuple[np.ndarray, int]]:
    """{gate key: (final bool mask (H, W), decision)} of one study: each pipeline p applies its rule
    (min area x ``factor``) to its map ``maps[p]`` (H, W) uint8 and, for a classifier gate, keeps it
    iff ``probs[p] >= threshold``; the final mask keeps the pixels more than half of the pipelines
    keep (one pipeline: its mask). The decision is the majority of the keep decisions (1 without one)."""
    out = {}
    for g in gates:
        votes, keeps = [], []
        for q, prob, c in zip(maps, probs, choice, strict=True):
            mask = gating.apply_rule(q, _scaled(c["rules"][g.key], factor))
            keep = (prob >= c["thresholds"][g.key]) if g.classifier else True
            votes.append(mask & keep)
            keeps.append(keep)
        final = np.sum(votes, axis=0) * 2 > len(votes)
        out[g.key] = (final, int(np.sum(keeps) * 2 > len(keeps)))
    return out


def digest(mask: np.ndarray) -> str:
    """A short fingerprint of a bool mask (H, W): equal masks, equal digests."""
    body = np.packbits(mask, axis=None).tobytes() + str(mask.shape).encode()
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def area_factors(
    mode: str, source_mm2: pd.Series, external_mm2: pd.Series, ids: np.ndarray
) -> tuple[np.ndarray, dict]:
    """(min-area factor of each external study (N,), the area rule in words and numbers).

    ``source_mm2`` / ``external_mm2``: mm^2 per 1024-grid pixel per study (NaN: no spacing). ``auto``
    is ``spacing`` when every study of both sets has a spacing, else ``grid``."""
    if mode not in AREA_MODES:
        raise ValueError(f"--area {mode!r}: valid choices: {', '.join(AREA_MODES)}")
    ext = external_mm2.reindex(ids).to_numpy(dtype=np.float64)
    src_ok, ext_ok = source_mm2.notna().all() and len(source_mm2) > 0, bool(np.isfinite(ext).all())
    if mode == "auto":
        mode = "spacing" if src_ok and ext_ok else "grid"
    if mode == "spacing" and not (src_ok and ext_ok):
        which = "source" if not src_ok else "external"
        raise ValueError(f"--area spacing: some {which} studies have no DICOM PixelSpacing; use --area grid")
    info = {
        "mode": mode,
        "source_mm2_per_grid_px": float(np.nanmedian(source_mm2)) if src_ok else None,
        "external_mm2_per_grid_px": float(np.median(ext)) if ext_ok else None,
    }
    if mode == "grid":
        info["text"] = (
            "minimum areas count on the common 1024 x 1024 grid (area x 1024^2 / (H x W)): the "
            "same share of each image, whatever its size"
        )
        return np.ones(ids.size), {**info, "factor": [1.0, 1.0, 1.0]}
    factors = info["source_mm2_per_grid_px"] / ext
    info["text"] = (
        f"minimum areas carried over physically by DICOM PixelSpacing: 1 px of the source's 1024 grid is "
        f"{info['source_mm2_per_grid_px']:.4f} mm^2 (median over its studies); each external study reads the "
        f"same mm^2 on its own grid (factor median {np.median(factors):.3f}, range "
        f"{factors.min():.3f}..{factors.max():.3f})"
    )
    return factors, {
        **info,
        "factor": [float(np.median(factors)), float(factors.min()), float(factors.max())],
    }

"""The classifier's files (``classifier/``, ``crossfit/fold_<k>/classifier/``): their checked readers.

    model.ubj     XGBoost's own format (:func:`load_classifier`)
    params.json   best_params (numbers), base (seed, max_bin, ...), features' settings (:func:`read_params`)
    gate.json     per gate mode: a finite threshold, a pixel rule, the model's hash (:func:`load_gate`)

``classify tune`` and ``classify gate fit`` write them; the gate, cross-fitting and deployment read
them here. A file that is there but malformed is a :class:`~dualstage.core.io.HandoffError` naming the
file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import xgboost
from xgboost import XGBClassifier

from dualstage.artifacts.gates import CLASSIFIER_GATES
from dualstage.core import gating
from dualstage.core.io import HandoffError

__all__ = ["load_classifier", "read_params", "load_gate", "not_json", "GATE_MODES"]

GATE_MODES = {k: g.rule for k, g in CLASSIFIER_GATES.items()}  # gate mode -> its pixel rule key


def load_classifier(directory: str | Path, name: str = "model.ubj") -> XGBClassifier:
    """Load a saved classifier (``model.ubj`` or ``default_model.ubj``, XGBoost's own format)."""
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no classifier model; run `classify tune` first")
    clf = XGBClassifier()
    try:
        clf.load_model(path)
    except xgboost.core.XGBoostError as exc:
        raise ValueError(f"{path}: not a readable XGBoost model ({str(exc).splitlines()[0]})") from None
    return clf


def not_json(constant: str):
    """``parse_constant`` of a strict JSON read: NaN / Infinity are refused."""
    raise ValueError(f"{constant} is not a JSON value")


def read_params(directory: str | Path) -> dict:
    """``params.json`` of a tuned classifier: best params, base settings, the features' settings.
    Strict JSON: NaN / Infinity (which Python's json would accept) are refused."""
    path = Path(directory) / "params.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tuned parameters; run `classify tune` first")
    try:
        params = json.loads(path.read_text(encoding="utf-8"), parse_constant=not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{path}: not valid JSON ({exc})") from None
    problem = _params_problem(params)
    if problem:
        raise HandoffError(f"{path}: {problem}; re-run `classify tune`")
    return params


def _params_problem(params: object) -> str | None:
    """What is wrong with a parsed params.json ("field: ..."), or None."""
    if not isinstance(params, dict):
        return f"expected a JSON object, got {type(params).__name__}"
    best, base = params.get("best_params"), params.get("base")
    if not isinstance(best, dict):
        return f"best_params: expected an object, got {best!r}"
    for key, value in best.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"best_params.{key}: expected a number, got {value!r}"
    if not isinstance(base, dict):
        return f"base: expected an object, got {base!r}"
    for key in ("seed", "max_bin"):
        if isinstance(base.get(key), bool) or not isinstance(base.get(key), int) or base[key] < 0:
            return f"base.{key}: expected an integer >= 0, got {base.get(key)!r}"
    return None


def load_gate(path: str | Path) -> dict:
    """gate.json as a dict ({} when the file does not exist), every fitted mode checked: a finite
    threshold, a valid pixel rule, a model hash; HandoffError naming the file and the field otherwise."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        gate = json.loads(path.read_text(encoding="utf-8"), parse_constant=not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{path}: not a valid gate file ({exc}); re-run `classify gate fit`") from None
    if not isinstance(gate, dict):
        raise HandoffError(f"{path}: expected a JSON object, got {type(gate).__name__}")
    for mode in (m for m in GATE_MODES if m in gate):
        problem = _entry_problem(gate[mode])
        if problem:
            raise HandoffError(f"{path}: {mode}.{problem}; re-run `classify gate fit`")
    if "best_mode" in gate and gate["best_mode"] not in GATE_MODES:
        raise HandoffError(
            f"{path}: best_mode: expected one of {', '.join(GATE_MODES)}, got {gate['best_mode']!r}"
        )
    return gate


def _entry_problem(entry: object) -> str | None:
    """What is wrong with one mode's entry of gate.json ("field: ..."), or None."""
    if not isinstance(entry, dict):
        return f"expected an object, got {entry!r}"
    thr = entry.get("threshold")  # a probability cut; above 1 keeps no mask, below 0 every mask
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not math.isfinite(thr):
        return f"threshold: expected a finite number, got {thr!r}"
    try:
        gating.check_rule(entry.get("pixel_rule"))
    except ValueError as exc:
        return f"pixel_rule.{exc}" if ": " in str(exc) else f"pixel_rule: {exc}"
    sha = entry.get("model_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        return f"model_sha256: expected a hex SHA-256, got {sha!r}"
    return None


PAPER_TABLE2 = {  # dual-stage paper, Table 2 (test set, probability 0.5)
    "default": {"absent": (0.90, 0.97, 0.93), "present": (0.85, 0.64, 0.73)},
    "tuned": {"absent": (0.93, 0.95, 0.94), "present": (0.81, 0.76, 0.78)},
}

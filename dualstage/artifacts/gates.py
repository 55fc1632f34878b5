"""The gate table: every way of turning probability maps into final masks, in one place.

Used by ``classify gate`` (modes and output folders), the report's comparison (order, labels,
rules) and its figures (colours). ``rule`` names the operating point in ``operating_point.json``
whose pixel rule the gate applies; ``classifier`` gates additionally empty a mask when the
presence classifier says "absent". Classifier gates write ``final/<set>/<key>/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "GateSpec",
    "GATES",
    "BASELINE",
    "REFERENCE",
    "CLASSIFIER_GATES",
    "COLORS",
    "SUMMARY_NAMES",
    "gate_name",
]


@dataclass(frozen=True)
class GateSpec:
    """One gate: key, display label, colour, operating-point rule, whether the classifier gates it."""

    key: str
    label: str
    color: str
    rule: str | None  # operating_point.json key; None: no pixel rule (all empty)
    classifier: bool = False
    summary: str = ""  # its name in report/summary.json


GATES: tuple[GateSpec, ...] = (
    GateSpec("default", "no gate", "#e6b800", "default", summary="no_gate"),  # + its threshold: gate_name
    GateSpec("threshold", "best threshold", "#1e90ff", "threshold", summary="best_threshold"),
    GateSpec("threshold_area", "threshold + min area", "#ff8c00", "threshold_area", summary="threshold_area"),
    GateSpec("triplet", "triplet", "#a64dff", "triplet", summary="triplet"),
    GateSpec("classifier", "classifier gate", "#ff2020", "threshold", True, "classifier"),
    GateSpec(
        "classifier_and_area",
        "classifier AND min area",
        "#ff00ff",
        "threshold_area",
        True,
        "classifier_and_area",
    ),
)
BASELINE = GateSpec("empty", "all empty (baseline)", "#000000", None, summary="all_empty")
REFERENCE = "threshold_area"  # the gate every other one is compared with
CLASSIFIER_GATES: dict[str, GateSpec] = {g.key: g for g in GATES if g.classifier}
COLORS: dict[str, str] = {g.key: g.color for g in (*GATES, BASELINE)}
SUMMARY_NAMES: dict[str, str] = {g.key: g.summary for g in (*GATES, BASELINE)}


def gate_name(spec: GateSpec, rule: Mapping | None) -> str:
    """The gate's display name under its pixel ``rule``: the un-tuned gate names its threshold
    (``train.val_threshold``, e.g. "no gate (0.4)"), every other gate its label."""
    if spec.rule == "default" and rule is not None and "threshold" in rule:
        return f"{spec.label} ({float(rule['threshold']):g})"
    return spec.label

"""dualstage: two-stage pneumothorax segmentation and detection.

The front door: ``from dualstage import Predictor`` (:mod:`dualstage.commands.predictor`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Predictor":  # loaded on first use: torch, smp and XGBoost are heavy
        from dualstage.commands.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'dualstage' has no attribute {name!r}")

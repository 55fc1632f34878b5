"""The Python front door: ``from dualstage.api import Predictor``.

A module of its own at the top (the commands' layer), so ``import dualstage`` stays light and no
import hides in the package's ``__init__``: importing this loads torch, smp and XGBoost.
"""

from dualstage.commands.predictor import Predictor

__all__ = ["Predictor"]

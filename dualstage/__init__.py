"""dualstage: two-stage pneumothorax segmentation and detection.

The Python front door is :mod:`dualstage.api` (``from dualstage.api import Predictor``).
"""

__version__ = "0.1.0"

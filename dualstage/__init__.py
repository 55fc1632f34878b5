"""dualstage: two-stage pneumothorax segmentation and detection."""

__version__ = "0.1.0"

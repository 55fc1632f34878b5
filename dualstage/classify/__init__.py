"""Stage two: presence classifier (DenseNet features, XGBoost tuning, mask gating)."""

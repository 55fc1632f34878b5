"""Stage one: U-Net segmenters (prepare, train, predict, sweep, evaluate)."""

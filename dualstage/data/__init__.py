"""Data: readers, prepare, splits, phantoms, datasets."""

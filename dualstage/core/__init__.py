"""The pure core: codecs, metrics, gate rules, io, progress, locks, one-line errors."""

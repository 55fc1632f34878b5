"""The commands: step functions, the pipeline, shards, parsers, the predictor front door."""

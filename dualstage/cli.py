"""Shared command-line plumbing: clean one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import argparse
import os
import sys

# Offline defaults: no hub retries, no update checks (the user can override both).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and call ``args.func(args)``; data errors exit 2 with a message."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("DUALSTAGE_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2

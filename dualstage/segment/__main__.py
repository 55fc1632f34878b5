"""``python -m dualstage.segment``: its parsers and steps are :mod:`dualstage.commands.segment_cli`."""

from dualstage.commands.segment_cli import main

if __name__ == "__main__":
    raise SystemExit(main())

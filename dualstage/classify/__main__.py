"""``python -m dualstage.classify``: its parsers and steps are :mod:`dualstage.commands.classify_cli`."""

from dualstage.commands.classify_cli import main

if __name__ == "__main__":
    raise SystemExit(main())

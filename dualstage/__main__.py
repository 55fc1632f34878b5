"""``python -m dualstage``: its parsers and steps are :mod:`dualstage.commands.main`."""

from dualstage.commands.main import main

if __name__ == "__main__":
    raise SystemExit(main())

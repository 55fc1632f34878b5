"""``python -m dualstage.report``: its parsers and steps are :mod:`dualstage.commands.report_cli`."""

from dualstage.commands.report_cli import main

if __name__ == "__main__":
    raise SystemExit(main())

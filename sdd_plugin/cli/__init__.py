"""The ``sdd`` command line. One module per sub-command in this package.

Each sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``sdd --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: command name -> module in sdd_plugin.cli
COMMANDS: dict[str, str] = {
    "score": "score",
    "prune": "prune",
    "distill": "distill",
    "check": "check",
    "eval": "evaluate",
    "merge": "merge",
    "specdec": "specdec",
    "report": "report",
    "bench": "bench",
    "demo": "demo",
    "data": "data",
    "plugins": "plugins",
}


class UserError(Exception):
    """An error caused by the user's input: printed without a traceback, exit code 2."""


def _module(name: str):
    return importlib.import_module(f"sdd_plugin.cli.{COMMANDS[name]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser (with every command, or only ``only`` for speed)."""
    parser = argparse.ArgumentParser(prog="sdd", description="Layer pruning + self-data distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        try:
            mod = _module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("sdd_plugin.cli"):
                continue  # command not implemented in this build
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sdd`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(_module(args.command).run(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sdd {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``sdd`` command line. One module per sub-command in this package.

Each sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``sdd --help`` is fast.
What the console shows (and what goes to the log file only) is set up in :mod:`.console`.
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
    parser = argparse.ArgumentParser(
        prog="sdd",
        description="Layer pruning + self-data distillation.",
        epilog="Exit codes: 0 done, 1 problems found (sdd check), 2 bad input. Each command logs to "
        "~/.cache/sdd-plugin/logs/ ($SDD_CACHE_DIR/logs), library warnings hidden from the console included.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, library noise included")
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
    if not args.command:
        parser.print_help()
        return 0
    from .console import setup_console

    log_file = setup_console(args.command, args.verbose, progress=not getattr(args, "no_progress", False))
    try:
        return int(_module(args.command).run(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        logging.getLogger(__name__).debug("sdd %s failed", args.command, exc_info=True)
        print(f"sdd {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger(__name__).exception("sdd %s failed", args.command)
        if log_file is not None:
            print(f"sdd {args.command}: the full log is in {log_file}", file=sys.stderr)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``sdd plugins``: list every registered metric, template, answer checker and backend."""

from __future__ import annotations

import argparse

HELP = "list registered plugins (metrics, templates, answer checkers, generation backends)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from ..plugins import _KINDS, available, get_plugin_manager

    found = {kind: available(kind) for kind in _KINDS}
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for kind, names in found.items():
        print(f"{kind + 's':10s} {', '.join(names) or '(none)'}")
    print("plugins   ", ", ".join(sorted(n for n, _ in get_plugin_manager().list_name_plugin())))
    return 0

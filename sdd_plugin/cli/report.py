"""``sdd report RUN_DIR``: one Markdown page with the figures of everything a run produced."""

from __future__ import annotations

import argparse

HELP = "gather a run's pruning, distillation, eval, merge and spec-dec outputs into REPORT.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdd report``."""
    parser.add_argument("run_dir", help="folder holding the run's outputs (searched recursively)")
    parser.add_argument("--out", default=None, help="where to write the report (default RUN_DIR/REPORT.md)")


def run(args: argparse.Namespace) -> int:
    """Build the report and print its path."""
    from ..report import build_report

    path = build_report(args.run_dir, out=args.out)
    print(f"wrote {path}")
    return 0

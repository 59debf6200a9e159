"""``sdd demo``: the whole pipeline on the embedded default model and generated data (~15 min, CPU)."""

from __future__ import annotations

import argparse

HELP = "run prune -> distill -> train (axolotl) -> eval -> report on the embedded default (no downloads)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (re-run to resume)")


def run(args: argparse.Namespace) -> int:
    from ..bench import run_recovery

    run_recovery("demo", args.out)
    return 0

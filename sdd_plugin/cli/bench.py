"""``sdd bench recovery``: baseline vs pruned vs SFT vs SDD vs merged, resumable."""

from __future__ import annotations

import argparse

import yaml

HELP = "benchmarks: `sdd bench recovery --preset quick|full|large` (resumable; re-run the same command to resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=["recovery"], help="which benchmark")
    parser.add_argument(
        "--preset", default="quick", help="demo | quick (≈45 min) | full (≈2 h) | large (≈9 h, resumable)"
    )
    parser.add_argument("--run-dir", default=None, help="output folder (default runs/recovery-<preset>)")
    parser.add_argument(
        "--data-root", default=None, help="folder of the real datasets (default ../shared/data)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset setting (YAML value), e.g. --set eval_limit=100 --set epochs=2",
    )


def parse_overrides(items: list[str]) -> dict:
    """``["k=v", ...]`` -> ``{k: yaml(v)}`` with a clear error for a malformed item."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from ..bench import run_recovery

    run_dir = args.run_dir or f"runs/recovery-{args.preset}"
    run_recovery(args.preset, run_dir, data_root=args.data_root, **parse_overrides(args.set))
    return 0

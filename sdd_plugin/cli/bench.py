"""``sdd bench recovery|drift``: the recovery benchmark and the forgetting-curve study, resumable."""

from __future__ import annotations

import argparse

import yaml

HELP = (
    "benchmarks: `sdd bench recovery --preset quick|full|large`, `sdd bench drift --preset default|quick` "
    "(resumable; re-run the same command to resume)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=["recovery", "drift"], help="which benchmark")
    parser.add_argument(
        "--preset",
        default=None,
        help="recovery: demo | quick (≈45 min, the default) | full (≈2 h) | large (≈9 h); "
        "drift: default (one sitting, the default) | quick (minutes)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="output folder (default runs/recovery-<preset>, runs/drift[-<preset>])",
    )
    parser.add_argument(
        "--data-root", default=None, help="folder of the real datasets (default ../shared/data)"
    )
    parser.add_argument(
        "--regime",
        choices=["lora", "full"],
        default=None,
        help="drift: LoRA adapters (default) or a full fine-tune",
    )
    parser.add_argument(
        "--train-set", choices=["gsm8k", "dolly", "alpaca"], default=None, help="drift: the fine-tuning set"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset setting (YAML value), e.g. --set eval_limit=100, --set checkpoints=[10,30,90]",
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
    overrides = parse_overrides(args.set)
    if args.which == "drift":
        from ..bench.drift import run_drift

        preset = args.preset or "default"
        for key, value in (("regime", args.regime), ("train_set", args.train_set)):
            if value is not None:
                overrides[key] = value
        run_dir = args.run_dir or ("runs/drift" if preset == "default" else f"runs/drift-{preset}")
        run_drift(preset, run_dir, data_root=args.data_root, **overrides)
        return 0
    if args.regime or args.train_set:
        raise ValueError("--regime and --train-set apply to `sdd bench drift` only")
    from ..bench import run_recovery

    preset = args.preset or "quick"
    run_dir = args.run_dir or f"runs/recovery-{preset}"
    run_recovery(preset, run_dir, data_root=args.data_root, **overrides)
    return 0

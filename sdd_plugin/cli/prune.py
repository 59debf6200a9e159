"""``sdd prune``: remove n decoder blocks and save a loadable checkpoint with a model card."""

from __future__ import annotations

import argparse

from .score import add_common_arguments

HELP = "prune n contiguous decoder blocks (angular distance by default) and save a HF checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--num-blocks", "-n", type=int, required=True, help="number of blocks to remove")
    parser.add_argument(
        "--start", type=int, default=None, help="remove [start, start+n) instead of the metric's choice"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: a content-addressed cache folder)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from ..prune import prune

    result = prune(
        args.model,
        num_blocks=args.num_blocks,
        metric=args.metric,
        calibration=args.calibration,
        start=args.start,
        out=args.out,
        tokens=args.tokens,
        num_samples=args.num_samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        dtype=args.dtype,
        text_field=args.text_field,
        overwrite=args.overwrite,
    )
    removed = result.params_before - result.params_after
    print(
        f"removed blocks: {result.removed_blocks} (metric {result.metric}{', reused' if result.reused else ''})"
    )
    print(f"layers: {result.num_layers_before} -> {result.num_layers_after}")
    print(
        f"parameters: {result.params_before:,} -> {result.params_after:,} "
        f"(-{removed:,}, -{100 * removed / max(result.params_before, 1):.1f}%)"
    )
    print(f"saved: {result.out_dir}")
    return 0

"""``sdd merge``: merge fine-tunes (model folders or LoRA adapters) with mergekit (SLERP or TIES)."""

from __future__ import annotations

import argparse

HELP = "merge fine-tuned models / LoRA adapters with mergekit (slerp: 2 models; ties: several)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="HF model folders, hub ids or peft LoRA adapter folders")
    parser.add_argument(
        "--method", choices=("slerp", "ties"), default="slerp", help="merge method (default slerp)"
    )
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument(
        "--t", type=float, default=0.5, help="slerp: interpolation factor in [0, 1] (0 = first model)"
    )
    parser.add_argument(
        "--densities",
        type=float,
        nargs="+",
        help="ties: fraction of each task vector kept (one, or one per model)",
    )
    parser.add_argument(
        "--weights", type=float, nargs="+", help="ties: weight of each model (one, or one per model)"
    )
    parser.add_argument(
        "--base-model",
        help="the model the inputs were fine-tuned from: the ties base, and the base for adapters whose recorded base is missing",
    )
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _one_or_list(values: list[float] | None) -> float | list[float] | None:
    if values is None:
        return None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    import json

    from ..merge import MERGE_FILE, merge_models

    out = merge_models(
        args.models,
        method=args.method,
        out=args.out,
        t=args.t,
        densities=_one_or_list(args.densities),
        weights=_one_or_list(args.weights),
        base_model=args.base_model,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    record = json.loads((out / MERGE_FILE).read_text(encoding="utf-8"))
    print(
        f"merged {len(record['inputs'])} models ({record['method']}, {json.dumps(record['params'])}) into {out}"
    )
    print(f"mergekit config: {out / 'mergekit.yaml'}")
    return 0

"""``sdd score``: the d(l, n) table of a model's decoder blocks (JSON, Markdown, PNG heatmap)."""

from __future__ import annotations

import argparse

HELP = "score decoder blocks: best start block l* for every n, d(l, n) heatmap"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``sdd score`` and ``sdd prune``."""
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name, local folder or hub id")
    parser.add_argument(
        "--metric", default="angular", help="block metric: angular (default), bi, last, or a plugin's"
    )
    parser.add_argument(
        "--calibration",
        default=None,
        help="calibration text: .txt/.json/.jsonl/.parquet/.csv file or hub dataset id "
        "(default: the small built-in corpus; pass e.g. wikitext or your fine-tuning set for real runs)",
    )
    parser.add_argument("--text-field", default=None, help="column holding the text (default: auto-detect)")
    parser.add_argument(
        "--tokens",
        choices=["last", "all"],
        default=None,
        help="compare the last token or all tokens (default: metric's)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=64, help="number of calibration texts (default 64)"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder for score.json, score.md, heatmap.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cache import output_dir
    from ..prune.scoring import score_model, write_score_outputs

    out = Path(args.out)
    with output_dir(out, overwrite=args.overwrite) as tmp:
        result = score_model(
            args.model,
            metric=args.metric,
            calibration=args.calibration,
            tokens=args.tokens,
            num_samples=args.num_samples,
            max_length=args.max_length,
            batch_size=args.batch_size,
            dtype=args.dtype,
            text_field=args.text_field,
        )
        names = write_score_outputs(result, tmp, title=f"{Path(str(args.model)).name}: {args.metric} d(l, n)")
    print(result.markdown_table())
    print(f"wrote {', '.join(str(out / p.name) for p in names.values())}")
    return 0

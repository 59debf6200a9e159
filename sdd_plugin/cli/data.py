"""``sdd data``: write data sets as JSON lines.

- ``wordproblems`` / ``multichoice``: the embedded synthetic data sets (no downloads);
- ``convert``: rows of any dataset format in a layout axolotl reads as it is (what a recipe's
  ``sdd://convert?...`` dataset path does).
"""

from __future__ import annotations

import argparse

HELP = "write data as JSON lines: embedded word problems, or any data set converted for axolotl"

SYNTHETIC = {
    "wordproblems": "GSM8K-style word problems: {question, answer ending '#### N'}",
    "multichoice": "their multiple-choice form: {question, choices, label}",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, what in SYNTHETIC.items():
        p = kinds.add_parser(kind, help=what, description=what)
        p.add_argument("--n", type=int, default=256, help="number of rows (default 256)")
        p.add_argument(
            "--split", choices=("train", "test"), default="train", help="train and test never overlap"
        )
        p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
        if kind == "wordproblems":
            p.add_argument("--with-params", action="store_true", help="add template + params")
        p.add_argument("--out", required=True, help="output .jsonl file")

    from ..distill.convert import LAYOUTS

    what = "convert a data set of any format (gsm8k, dolly, alpaca, ...) into a layout axolotl reads"
    p = kinds.add_parser("convert", help=what, description=what)
    p.add_argument("--source", required=True, help="local json/jsonl(.gz)/parquet/csv file, folder or hub id")
    p.add_argument(
        "--format", required=True, help="dataset format: alpaca, dolly, messages, sharegpt, gsm8k, openmath"
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="messages",
        help="messages (axolotl type chat_template, default) or alpaca (type alpaca)",
    )
    p.add_argument(
        "--config", default=None, help="config name of a hub data set (e.g. main for openai/gsm8k)"
    )
    p.add_argument("--split", default="train", help="split of a hub data set or folder (default train)")
    p.add_argument("--n", type=int, default=None, help="only the first N rows (default all)")
    p.add_argument("--out", required=True, help="output .jsonl file")


def run(args: argparse.Namespace) -> int:
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.kind == "convert":
        from ..distill.convert import convert_dataset

        path = convert_dataset(
            args.source,
            args.format,
            args.out,
            layout=args.layout,
            split=args.split,
            limit=args.n,
            config=args.config,
        )
        rows = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"wrote {rows} {args.layout} rows converted from {args.source} ({args.format}) to {path}")
        return 0

    from ..data.synthetic import multiple_choice, word_problems, write_jsonl

    if args.kind == "wordproblems":
        rows = word_problems(args.n, seed=args.seed, split=args.split, with_params=args.with_params)
    else:
        rows = multiple_choice(args.n, seed=args.seed, split=args.split)
    path = write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} {args.split} {args.kind} rows to {path}")
    return 0

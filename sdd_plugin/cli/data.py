"""``sdd data``: write the embedded synthetic data sets (no downloads) as JSON lines."""

from __future__ import annotations

import argparse

HELP = "write embedded synthetic data: GSM8K-style word problems or their multiple-choice form"

KINDS = ("wordproblems", "multichoice")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind",
        choices=KINDS,
        help="wordproblems: {question, answer ending '#### N'}; multichoice: {question, choices, label}",
    )
    parser.add_argument("--n", type=int, default=256, help="number of rows (default 256)")
    parser.add_argument(
        "--split", choices=("train", "test"), default="train", help="train and test never overlap"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--with-params", action="store_true", help="wordproblems: add template + params")
    parser.add_argument("--out", required=True, help="output .jsonl file")


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import multiple_choice, word_problems, write_jsonl

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.kind == "wordproblems":
        rows = word_problems(args.n, seed=args.seed, split=args.split, with_params=args.with_params)
    else:
        rows = multiple_choice(args.n, seed=args.seed, split=args.split)
    path = write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} {args.split} {args.kind} rows to {path}")
    return 0

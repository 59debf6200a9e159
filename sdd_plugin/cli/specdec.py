"""``sdd specdec``: speculative decoding of a target with a (pruned) draft; acceptance and speedup."""

from __future__ import annotations

import argparse

HELP = "speculative decoding with a pruned draft: acceptance rate, tokens/step, speedup, identical outputs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", required=True, help="target model (folder, hub id, embedded name or LoRA adapter)"
    )
    parser.add_argument(
        "--draft", required=True, help="draft model, e.g. the pruned model (or its LoRA adapter)"
    )
    parser.add_argument(
        "--prompts",
        help="prompt file: .txt (one per line), .json list or .jsonl (prompt/question/instruction/text)",
    )
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="greedy tokens per prompt (default 64)"
    )
    parser.add_argument(
        "--num-assistant-tokens",
        type=int,
        help="draft tokens per step (default: transformers' adaptive default, up to 20 with a confidence stop)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="time each prompt N times, keep the fastest")
    parser.add_argument(
        "--no-chat-template", action="store_true", help="feed prompts raw, without the chat template"
    )
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument(
        "--out", required=True, help="output folder for specdec.json, specdec.md, specdec.png"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from ..cache import output_dir
    from ..specdec import default_prompts, load_prompts, measure_specdec, write_outputs

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    prompts = load_prompts(args.prompts) if args.prompts else None
    if args.limit is not None:
        prompts = (prompts or default_prompts())[: args.limit]
    with output_dir(args.out, overwrite=args.overwrite) as tmp:
        result = measure_specdec(
            args.target,
            args.draft,
            prompts=prompts,
            max_new_tokens=args.max_new_tokens,
            num_assistant_tokens=args.num_assistant_tokens,
            repeats=args.repeats,
            chat_template=not args.no_chat_template,
            dtype=args.dtype,
        )
        write_outputs(result, tmp)
    s = result["summary"]

    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    print(f"identical greedy outputs: {s['identical_outputs']}/{s['num_prompts']}")
    print(
        f"acceptance rate: {f(s['acceptance_rate'])}  accepted draft tokens/step: {f(s['accepted_per_step'])}"
    )
    print(f"tokens per target step: {f(s['tokens_per_step'])}  speedup: {f(s['speedup'], '.2f')}x")
    print(f"note: {result['warning']}")
    print(f"wrote {args.out}/specdec.json, specdec.md, specdec.png")
    return 0

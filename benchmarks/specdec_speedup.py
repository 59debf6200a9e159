"""Speculative decoding benchmark: the default model as target, its 6-block-pruned self as draft.

Prints the acceptance rate, tokens per target step and the wall-clock speedup from one run (target
and assisted decoding interleaved per prompt), on the built-in prompts. Writes specdec.json/.md/.png.

    OMP_NUM_THREADS=2 python benchmarks/specdec_speedup.py --out runs/specdec-bench
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--draft", help="draft model folder (default: prune the target by --num-blocks)")
    parser.add_argument("--num-blocks", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-assistant-tokens", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N built-in prompts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="runs/specdec-bench")
    args = parser.parse_args()

    from sdd_plugin.specdec import default_prompts, measure_specdec

    draft = args.draft
    if draft is None:
        from sdd_plugin.prune import prune

        res = prune(args.target, num_blocks=args.num_blocks)
        draft = str(res.out_dir)
        print(f"draft: {draft} (removed blocks {res.removed_blocks})")
    prompts = default_prompts()[: args.limit] if args.limit else None
    result = measure_specdec(
        args.target,
        draft,
        prompts=prompts,
        max_new_tokens=args.max_new_tokens,
        num_assistant_tokens=args.num_assistant_tokens,
        repeats=args.repeats,
        out=args.out,
    )
    s = result["summary"]
    print(json.dumps({k: s[k] for k in (
        "num_prompts", "identical_outputs", "acceptance_rate", "accepted_per_step", "tokens_per_step",
        "time_target_s", "time_assisted_s", "speedup", "target_tokens_per_s", "assisted_tokens_per_s",
    )}, indent=2))  # fmt: skip
    print(result["warning"])
    print(f"wrote {args.out}/specdec.json, specdec.md, specdec.png")


if __name__ == "__main__":
    main()

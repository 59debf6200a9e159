"""``sdd distill``: the teacher rewrites a fine-tuning set's responses (self-data distillation)."""

from __future__ import annotations

import argparse

HELP = "self-data distillation: the unpruned teacher rewrites every response of a fine-tuning set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher", default="smollm2-135m-instruct", help="teacher model (name, folder, hub id)"
    )
    parser.add_argument(
        "--data", required=True, help="dataset: local json/jsonl(.gz)/parquet/csv, folder or hub id"
    )
    parser.add_argument(
        "--format",
        default="gsm8k",
        help="dataset format: alpaca, dolly, messages (chat), sharegpt, gsm8k, openmath (default gsm8k)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (or a .jsonl file); an existing one needs --overwrite"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--split", default="train", help="split of a hub dataset (default train)")
    parser.add_argument(
        "--template", default=None, help="template (default: math for gsm8k/openmath, else general)"
    )
    parser.add_argument("--checker", default=None, help="answer checker (default like --template)")
    parser.add_argument(
        "--backend",
        default="auto",
        help="generation backend: hf, vllm, ... (default auto: vllm on CUDA, else hf)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="spread generation over a Ray cluster (no ADDRESS: start Ray on this machine)",
    )
    parser.add_argument("--ray-workers", type=int, default=None, help="Ray actors (default: per GPU / node)")
    parser.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a backend engine option, repeatable; vllm: enforce_eager, tensor_parallel_size, kv_cache_gib, "
        "gpu_memory_utilization, max_model_len, vllm_args; hf: prompt_lookup, engine, attention, device, "
        "cache_implementation (README: Backends)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="re-generate rejected rewrites up to N times with sampling; keep the first that passes",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="teacher dtype, e.g. bfloat16 (default float32)")
    parser.add_argument(
        "--cache-dir", default=None, help="cache root (default $SDD_CACHE_DIR or ~/.cache/sdd-plugin)"
    )
    parser.add_argument(
        "--allow-truncated", action="store_true", help="accept rewrites cut off at --max-new-tokens"
    )
    parser.add_argument(
        "--kd-top-k",
        type=int,
        default=0,
        help="also write kd.jsonl: the teacher's top-k log-probs per token for axolotl's KD trainer (0 = off)",
    )
    parser.add_argument("--no-nll", action="store_true", help="skip the NLL distribution-shift meter")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--strict", action="store_true", help="stop on rows with an empty response (default: skip them)"
    )


def run(args: argparse.Namespace) -> int:
    import json

    from ..distill.stage import distill_dataset
    from ..generation.backend_args import pairs_to_dict, parse_backend_args
    from ..interfaces import GenerationSettings

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.kd_top_k < 0:
        raise ValueError(f"--kd-top-k must be >= 0 (0 = off), got {args.kd_top_k}")
    extra = {"dtype": args.dtype} if args.dtype else {}
    extra.update(parse_backend_args(args.backend, pairs_to_dict(args.backend_arg)))
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        extra=extra,
    )
    result = distill_dataset(
        teacher=args.teacher,
        data=args.data,
        format=args.format,
        out=args.out,
        template=args.template,
        checker=args.checker,
        limit=args.limit,
        split=args.split,
        settings=settings,
        backend=args.backend,
        cache_dir=args.cache_dir,
        measure_nll=not args.no_nll,
        show_progress=not args.no_progress,
        allow_truncated=args.allow_truncated,
        retries=args.retries,
        overwrite=args.overwrite,
        strict=args.strict,
        ray=args.ray or False,
        ray_workers=args.ray_workers,
        kd_top_k=args.kd_top_k,
    )
    r = result.report
    keys = (
        "rows",
        "skipped_empty_responses",
        "accepted",
        "acceptance_rate",
        "fallbacks",
        "mean_generated_tokens",
        "tokens_per_s",
        "nll_original",
        "nll_distilled",
    )
    print(json.dumps({k: r.get(k) for k in keys}, indent=2))
    print(f"wrote {result.output_path} and {result.report_path}")
    if result.kd_path is not None:
        print(f"wrote {result.kd_path} (top-{args.kd_top_k} teacher log-probs per token)")
    return 0

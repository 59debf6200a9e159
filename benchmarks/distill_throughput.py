"""Teacher-generation throughput of the distillation engine vs per-example ``model.generate``.

One run, the same GSM8K distillation prompts (math template, teacher chat template) and the same
``max_new_tokens`` for both:

- speedup = engine tokens/s (the ``hf`` backend: length-sorted left-padded batches) divided by the
  tokens/s of calling ``model.generate`` once per example (target >= 10);
- efficiency = the engine's achieved GFLOP/s (2 x params x tokens / s) as a fraction of a plain
  fp32 matmul's GFLOP/s measured in the same run, just before and just after the engine (the
  larger of the two; target >= 0.5). *Tokens* are every token the engine puts through the model,
  prompt and generated: the usual model-FLOPs utilisation, and the only reading under which the
  target can be met at all, since counting generated tokens alone caps even an engine that runs
  every matmul at the measured rate at ``ceiling_fraction`` (0.49 on the 64 GSM8K prompts: 11,740
  prompt tokens to prefill even with their shared prefix computed once, against 9,024
  generated). Printed beside it: the generated-only figure, and the fraction of the FLOPs the
  engine really computed (the shared prefix once per batch, no output head for prompt tokens).

It also prints the *ceilings* these prompts allow: an engine running every matmul at the measured
matmul GFLOP/s still has to prefill the prompts (minus the prefix shared within each batch, at
2 x non-embedding params per token: logits only for the last position). ``ceiling_fraction``
is generated FLOPs / (generated + prefill FLOPs), the best "fraction of matmul" that counts only
generated tokens; ``ceiling_speedup`` is the per-example baseline's time per token against that
best-case engine time.

``--backend hf,vllm,ray`` also times the other teacher backends on the same prompts and settings
(the ``hf`` engine always runs: it is the reference) and prints each one's tokens/s and its ratio
to ``hf``, with how many rows came out identical to ``hf``'s. ``vllm`` is timed after its engine
started (``--backend-arg KEY=VALUE`` sets its engine options, as ``sdd distill`` does); ``ray``
spreads the batches over ``--ray-workers`` local actors running ``--ray-backend`` (default
``hf``) in batches of ``--ray-batch-size`` (default: ``--batch-size`` / workers, so that every actor
gets a batch), timed from the call that starts its actor pool, so the actors' model loading is
included.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/distill_throughput.py --rows 64 --max-new-tokens 256 \\
        [--baseline-rows 8] [--batch-size 64] [--backend hf,vllm,ray] [--json out.json]

``--baseline-rows`` times the per-example baseline on the first N of the prompts only (it is slow);
its tokens/s is a rate, so the ratio stays comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def matmul_gflops(seconds: float = 2.0, dtype: str = "float32") -> float:
    """Best GFLOP/s of square 1024 and MLP-shaped (1024x576 @ 576x1536) matmuls in ``dtype``."""
    import torch

    best = 0.0
    for m, k, n in ((1024, 1024, 1024), (1024, 576, 1536)):
        a = torch.randn(m, k, dtype=getattr(torch, dtype))
        b = torch.randn(k, n, dtype=getattr(torch, dtype))
        for _ in range(3):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
    return best


BACKENDS = ("hf", "vllm", "ray")


def parse_backends(text: str) -> list[str]:
    """``"vllm,ray"`` -> ``["hf", "vllm", "ray"]``: known names, ``hf`` first (the reference)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise SystemExit(f"--backend: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return ["hf"] + [n for n in dict.fromkeys(names) if n != "hf"]


def time_backend(name: str, path: str, prompts: list[str], settings, args) -> dict:
    """Generate ``prompts`` with backend ``name`` (``vllm`` or ``ray``): results, seconds, start-up."""
    results: list = []
    start = time.perf_counter()
    if name == "vllm":
        from sdd_plugin.generation.vllm_backend import VLLM_BACKEND as backend

        backend.engine(path, settings)  # started (and compiled) outside the timing
    else:
        from sdd_plugin.generation.ray_runner import RayBackend

        backend = RayBackend(args.ray_backend, workers=args.ray_workers)
        backend.connect()
    startup = time.perf_counter() - start
    start = time.perf_counter()
    backend.generate(path, prompts, settings, results.append, desc=name)
    seconds = time.perf_counter() - start
    if name == "vllm":
        backend.close()
    else:
        import ray

        ray.shutdown()
    return {"results": sorted(results, key=lambda r: r.index), "seconds": seconds, "startup": startup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K jsonl (local) or hub id")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the engine's default")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--baseline-rows", type=int, default=None, help="per-example baseline on the first N prompts"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        help="weights/activations dtype of both the engine and the baseline (and of the matmul peak)",
    )
    parser.add_argument(
        "--prompt-lookup", type=int, default=None, help="draft tokens per step (default: the backend's)"
    )
    parser.add_argument(
        "--backend", default="hf", help="comma list of backends to time: hf, vllm, ray (hf always runs)"
    )
    parser.add_argument(
        "--backend-arg", action="append", default=[], metavar="KEY=VALUE", help="a vllm engine option"
    )
    parser.add_argument("--ray-workers", type=int, default=2, help="Ray actors for --backend ray")
    parser.add_argument("--ray-backend", default="hf", help="the backend the Ray actors run")
    parser.add_argument(
        "--ray-batch-size",
        type=int,
        default=None,
        help="batch size on Ray (default: --batch-size / --ray-workers, so that every actor gets a batch)",
    )
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    backends = parse_backends(args.backend)

    import torch
    from tqdm.auto import tqdm

    from sdd_plugin.distill.formats import load_rows, read_examples
    from sdd_plugin.distill.stage import render_prompt
    from sdd_plugin.generation.hf.backend import HF_BACKEND, plan_batches, stop_token_ids
    from sdd_plugin.generation.hf.prefill import common_prefix_length
    from sdd_plugin.interfaces import GenerationSettings
    from sdd_plugin.models import machine_summary, resolve_model
    from sdd_plugin.plugins import get_template

    load_start = os.getloadavg()  # another job on the machine shows here
    rows = load_rows(args.data, "gsm8k", limit=args.rows)
    examples = read_examples(rows, "gsm8k", args.data)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, extra={"dtype": args.dtype}
    )
    if args.prompt_lookup is not None:
        settings.extra["prompt_lookup"] = args.prompt_lookup
    path = str(resolve_model(args.model))
    model, tok = HF_BACKEND.load(path, settings)
    template = get_template("math")
    prompts = [render_prompt(tok, *template.render(ex.instruction, ex.prompt_reference)) for ex in examples]
    prompt_tokens = HF_BACKEND.prompt_lengths(tok, prompts)
    params = sum(p.numel() for p in model.parameters())
    embed_params = model.get_input_embeddings().weight.numel()
    # the prefix the engine computes once per batch (it shares it across the batch's rows)
    shared_tokens = 0
    for batch in plan_batches(prompt_tokens, args.batch_size):
        enc = tok(
            [prompts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        if len(batch) > 1:
            shared = common_prefix_length(enc["input_ids"], enc["attention_mask"].sum(-1))
            shared_tokens += shared * (len(batch) - 1) if shared >= 8 else 0
    threads = torch.get_num_threads()

    mm_before = matmul_gflops(dtype=args.dtype)

    # the engine, between two matmul probes
    results = []
    start = time.perf_counter()
    HF_BACKEND.generate(path, prompts, settings, results.append, desc="engine")
    engine_s = time.perf_counter() - start
    engine_tokens = sum(r.num_tokens for r in results)
    mm_after = matmul_gflops(dtype=args.dtype)

    # the other backends on the same prompts and settings
    compared = {}
    hf_texts = [r.text for r in sorted(results, key=lambda r: r.index)]
    for name in backends[1:]:
        from sdd_plugin.generation.backend_args import pairs_to_dict, parse_backend_args

        extra, batch_size = dict(settings.extra), settings.batch_size
        if name == "vllm":
            extra.update(parse_backend_args("vllm", pairs_to_dict(args.backend_arg)))
        else:
            batch_size = args.ray_batch_size or max(1, settings.batch_size // args.ray_workers)
        run = time_backend(name, path, prompts, replace(settings, extra=extra, batch_size=batch_size), args)
        tokens = sum(r.num_tokens for r in run["results"])
        compared[name] = {
            "tokens": tokens,
            "seconds": round(run["seconds"], 2),
            "startup_seconds": round(run["startup"], 2),
            "tokens_per_s": round(tokens / run["seconds"], 2),
            "vs_hf": round(tokens / run["seconds"] / (engine_tokens / engine_s), 2),
            "rows_same_as_hf": sum(r.text == t for r, t in zip(run["results"], hf_texts)),
            "batch_size": batch_size,
        }

    # per-example model.generate on (a prefix of) the same prompts
    n_base = min(args.baseline_rows or len(prompts), len(prompts))
    eos = stop_token_ids(tok, model.generation_config)
    base_tokens, start = 0, time.perf_counter()
    for prompt in tqdm(prompts[:n_base], desc="per-example", unit="row"):
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        stop = next((j for j, t in enumerate(new) if t in eos), None)
        base_tokens += len(new) if stop is None else stop + 1
    base_s = time.perf_counter() - start

    matmul = max(mm_before, mm_after)
    engine_tps = engine_tokens / engine_s
    base_tps = base_tokens / base_s
    gflops = 2 * params * engine_tps / 1e9
    gflops_all = 2 * params * (engine_tokens + sum(prompt_tokens)) / engine_s / 1e9
    prefill_tokens = sum(prompt_tokens) - shared_tokens
    gen_flops = 2 * params * engine_tokens
    prefill_flops = 2 * (params - embed_params) * prefill_tokens
    best_engine_s = (gen_flops + prefill_flops) / (matmul * 1e9)
    res = {
        "machine": machine_summary(),
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "model": args.model,
        "params": params,
        "dtype": args.dtype,
        "torch_threads": threads,
        "rows": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "engine_tokens": engine_tokens,
        "engine_seconds": round(engine_s, 2),
        "engine_tokens_per_s": round(engine_tps, 2),
        "baseline_rows": n_base,
        "baseline_tokens": base_tokens,
        "baseline_seconds": round(base_s, 2),
        "baseline_tokens_per_s": round(base_tps, 2),
        "speedup": round(engine_tps / base_tps, 2),
        "matmul_gflops": round(matmul, 2),
        "matmul_gflops_before_after": [round(mm_before, 2), round(mm_after, 2)],
        "engine_gflops": round(gflops, 2),
        "engine_fraction_of_matmul": round(gflops / matmul, 3),
        "engine_gflops_incl_prefill": round(gflops_all, 2),
        "engine_fraction_incl_prefill": round(gflops_all / matmul, 3),
        # the FLOPs the engine really ran: the shared prefix once a batch, no output head for prompt
        # tokens (2 x params per generated token, 2 x non-embedding params per prefilled token)
        "engine_fraction_computed": round((gen_flops + prefill_flops) / engine_s / 1e9 / matmul, 3),
        "prefill_tokens_computed": prefill_tokens,
        "shared_prefix_tokens_skipped": shared_tokens,
        "ceiling_fraction": round(gen_flops / (gen_flops + prefill_flops), 3),
        "ceiling_speedup": round(engine_tokens / best_engine_s / base_tps, 2),
    }
    res["targets"] = {
        "speedup": {"value": res["speedup"], "target": 10.0, "met": res["speedup"] >= 10.0},
        "fraction_of_matmul": {
            "reading": "2 x params x (prompt + generated tokens) / s",
            "value": res["engine_fraction_incl_prefill"],
            "target": 0.5,
            "met": res["engine_fraction_incl_prefill"] >= 0.5,
        },
    }
    res["backends"] = {
        "hf": {
            "tokens": engine_tokens,
            "seconds": round(engine_s, 2),
            "tokens_per_s": round(engine_tps, 2),
            "vs_hf": 1.0,
            "rows_same_as_hf": len(prompts),
            "batch_size": settings.batch_size,
        },
        **compared,
    }
    if "ray" in compared:
        res["backends"]["ray"].update(workers=args.ray_workers, actors_run=args.ray_backend)
    print(json.dumps(res, indent=2))
    if compared:
        print("| backend | batch | tokens | seconds | tokens/s | vs hf | rows identical to hf |")
        print("|---|---|---|---|---|---|---|")
        for name, b in res["backends"].items():
            print(
                f"| {name} | {b['batch_size']} | {b['tokens']} | {b['seconds']} | {b['tokens_per_s']} | "
                f"{b['vs_hf']:.2f}x | {b['rows_same_as_hf']}/{len(prompts)} |"
            )
    verdict = {True: "met", False: "NOT met"}
    print(
        f"speedup vs per-example generate: {res['speedup']:.2f}x (target >= 10: "
        f"{verdict[res['targets']['speedup']['met']]}); engine {gflops_all:.1f} GFLOP/s counting prompt "
        f"and generated tokens = {res['engine_fraction_incl_prefill']:.2f} of matmul {matmul:.1f} GFLOP/s "
        f"(target >= 0.5: {verdict[res['targets']['fraction_of_matmul']['met']]}; "
        f"{res['engine_fraction_of_matmul']:.2f} counting generated tokens only, "
        f"{res['engine_fraction_computed']:.2f} counting the FLOPs it computed)"
    )
    print(
        f"ceilings for these prompts at the measured matmul rate: speedup {res['ceiling_speedup']:.1f}x, "
        f"fraction {res['ceiling_fraction']:.2f} (prefill of {prefill_tokens} prompt tokens vs "
        f"{engine_tokens} generated)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

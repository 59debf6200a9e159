"""Cost of the block scan relative to one plain forward pass over the same calibration set.

``score_blocks`` scores every span length n from a single forward pass per batch (hooks on the
decoder blocks). This script times, on the same model, texts and batches, interleaved and
repeated to cut noise:

- ``forward``: tokenize + ``model(input_ids, attention_mask)`` (the full causal LM, with logits);
- ``forward_base``: the same without the LM head (``model.model``), what the scan runs;
- ``scan``: ``score_blocks(...)`` (tokenize + forward with hooks + all-pairs distances).

and prints median times and the ratio scan / forward (target <= 1.3).

    OMP_NUM_THREADS=2 python benchmarks/scan_cost.py --num-samples 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--calibration", default=None, help="calibration source (default: built-in corpus)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", choices=["last", "all"], default="last")
    parser.add_argument("--metric", default="angular")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from sdd_plugin.models import load_model
    from sdd_plugin.prune.calibration import load_calibration_texts
    from sdd_plugin.prune.scoring import _base_model, score_blocks

    texts = load_calibration_texts(args.calibration, limit=args.num_samples)
    model, tok = load_model(args.model)
    tok.padding_side = "right"
    base = _base_model(model)

    def plain(runner) -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = tok(
                    texts[i : i + args.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=args.max_length,
                )
                runner(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)

    def scan() -> None:
        score_blocks(
            model,
            tok,
            texts,
            metric=args.metric,
            tokens=args.tokens,
            batch_size=args.batch_size,
            max_length=args.max_length,
            progress=False,
        )

    runs = {"forward": lambda: plain(model), "forward_base": lambda: plain(base), "scan": scan}
    plain(model)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))  # interleave to spread drift
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [s / f for s, f in zip(times["scan"], times["forward"])]
    result = {
        "model": args.model,
        "num_samples": len(texts),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "tokens": args.tokens,
        "metric": args.metric,
        "threads": torch.get_num_threads(),
        "seconds": times,
        "median_seconds": med,
        "ratio_scan_over_forward": med["scan"] / med["forward"],
        "ratio_scan_over_forward_per_repeat": ratios,
        "ratio_scan_over_forward_without_lm_head": med["scan"] / med["forward_base"],
    }
    print(f"samples={len(texts)} batch={args.batch_size} max_length={args.max_length} tokens={args.tokens}")
    for name in runs:
        print(f"{name:>13s}: median {med[name]:.2f}s  runs {[round(t, 2) for t in times[name]]}")
    print(f"scan / plain forward          = {result['ratio_scan_over_forward']:.3f}  (target <= 1.3)")
    print(f"scan / forward without lm_head = {result['ratio_scan_over_forward_without_lm_head']:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What pruning saves: parameters, analytic FLOPs per token, and measured prefill/decode tokens/s.

:func:`model_shape` reads a model folder's config and counts its parameters; :func:`flops_per_token`
is the analytic forward cost ``2 * N_nonemb + 4 * n_layer * n_ctx * d_attn`` (weight matmuls, then
the attention scores ``Q K^T`` and the weighted sum ``A V``; the output head ``2 * d_model * vocab``
is reported beside it); :func:`compare_throughput` times the same random prompts through several
models, interleaved round by round, so their ratio is measured under the same machine load.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

#: The formula :func:`flops_per_token` evaluates, as printed in reports.
FLOPS_FORMULA = (
    "FLOPs/token = 2·N_nonemb + 4·n_layer·n_ctx·d_attn (weight matmuls; attention scores QKᵀ and "
    "weighted sum AV over n_ctx context tokens, d_attn = heads × head_dim); the output head adds "
    "2·d_model·vocab"
)


def model_shape(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Layers, widths and parameter counts of a HF model folder (config + safetensors headers,
    no weights loaded): ``params`` (unique tensors), ``embedding_params`` (input embedding and an
    untied output head) and ``nonembedding_params``."""
    import json

    from safetensors import safe_open

    folder = Path(model_dir)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = cfg.get("text_config") or cfg
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to count")
    total, embedding = 0, 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= d
                total += n
                if name.endswith(("embed_tokens.weight", "lm_head.weight", "wte.weight")):
                    embedding += n
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    return {
        "num_layers": int(cfg["num_hidden_layers"]),
        "hidden_size": int(cfg["hidden_size"]),
        "attention_width": heads * head_dim,
        "vocab_size": int(cfg["vocab_size"]),
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "params": total,
        "embedding_params": embedding,
        "nonembedding_params": total - embedding,
    }


def flops_per_token(shape: dict[str, Any], n_ctx: int = 512) -> dict[str, float]:
    """Analytic forward FLOPs of one token attending ``n_ctx`` tokens (:data:`FLOPS_FORMULA`)."""
    body = 2 * shape["nonembedding_params"] + 4 * shape["num_layers"] * n_ctx * shape["attention_width"]
    head = 2 * shape["hidden_size"] * shape["vocab_size"]
    return {"n_ctx": n_ctx, "flops": float(body), "flops_with_head": float(body + head)}


def compare_throughput(
    models: dict[str, str | os.PathLike],
    dtype: str = "float32",
    batch: int = 4,
    prompt_tokens: int = 256,
    new_tokens: int = 64,
    rounds: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s of each model on the same random prompts (median of ``rounds``).

    Each round runs every model once: a forward over ``batch × prompt_tokens`` (prefill), then
    greedy ``generate`` of exactly ``new_tokens`` (decode time = generate time - prefill time).
    The models share one process and alternate, so a slow phase of the machine hits all of them."""
    import torch
    from transformers import AutoModelForCausalLM

    if min(batch, prompt_tokens, new_tokens, rounds) < 1:
        raise ValueError("batch, prompt_tokens, new_tokens and rounds must be >= 1")
    loaded = {
        name: AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
        for name, path in models.items()
    }
    vocab = min(m.config.vocab_size for m in loaded.values())
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab - 100, (batch, prompt_tokens), generator=gen)
    mask = torch.ones_like(ids)
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "generate": []} for n in loaded}
    kwargs = dict(do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)
    with torch.inference_mode():
        for m in loaded.values():  # warm-up (allocator, oneDNN primitives)
            m.generate(
                ids[:1, :16], attention_mask=mask[:1, :16], **dict(kwargs, min_new_tokens=2, max_new_tokens=2)
            )
        for _ in range(rounds):
            for name, m in loaded.items():
                t0 = time.perf_counter()
                m(input_ids=ids, attention_mask=mask, use_cache=False)
                t1 = time.perf_counter()
                m.generate(ids, attention_mask=mask, **kwargs)
                t2 = time.perf_counter()
                times[name]["prefill"].append(t1 - t0)
                times[name]["generate"].append(t2 - t1)
    out = {}
    for name, t in times.items():
        prefill = statistics.median(t["prefill"])
        decode = max(statistics.median(t["generate"]) - prefill, 1e-9)
        out[name] = {
            "prefill_tokens_per_s": batch * prompt_tokens / prefill,
            "decode_tokens_per_s": batch * new_tokens / decode,
            "prefill_seconds": prefill,
            "decode_seconds": decode,
        }
    return out

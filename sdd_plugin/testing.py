"""Tiny random models for fast tests and benchmarks (no downloads).

``make_tiny_model(arch, out)`` writes a randomly initialised HF checkpoint (safetensors) of a small
config of the given architecture, with the default model's tokenizer, so tokenization, chat
templates and generation all work offline.
"""

from __future__ import annotations

from pathlib import Path

TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3")


def tiny_config(arch: str, num_layers: int = 6, vocab_size: int = 49152):
    """A small config of ``arch`` (hidden 64, 4 heads, 2 KV heads)."""
    from transformers import AutoConfig

    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    if arch == "gemma3":
        # gemma3_text: mixed sliding/full attention -> a per-layer `layer_types` list
        common.update(head_dim=16, sliding_window=16, query_pre_attn_scalar=16)
        return AutoConfig.for_model("gemma3_text", **common)
    if arch == "qwen3":
        common.update(head_dim=16)
    if arch == "qwen2":
        common.update(use_sliding_window=False)
    return AutoConfig.for_model(arch, **common)


def make_tiny_model(arch: str, out: str | Path, num_layers: int = 6, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model with the default model's tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer

    out = Path(out)
    torch.manual_seed(seed)
    config = tiny_config(arch, num_layers=num_layers)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer().save_pretrained(out)
    return out

"""A decode step for Llama-family models that calls the model's own modules without
transformers' per-call plumbing.

A stock ``model(...)`` call wraps a decode step's arithmetic in Python work: building masks
through generic helpers, recording outputs, passing keyword arguments through every layer,
dispatching the attention interface. :class:`LeanDecodeStep` runs the same arithmetic (embedding,
norms, projections, rotary embedding, MLP, output head) in the same order on the same tensors,
with the attention on the C kernel of :mod:`.kernel`, so its logits are bit-identical to the
stock forward's. The norms and the rotary embedding are inlined with fewer tensor operations
(each rewrite exact, see :meth:`LeanDecodeStep.__call__`), so the layer, norm and MLP classes
must be the stock ones.

Hand-written because transformers has no lighter entry point for one decode step, and
``torch.compile`` recompiles for every batch size and cache width the engine goes through. It
covers only decoder layers whose ``forward`` is stock Llama, Mistral, Qwen2 or Qwen3 code with full
attention; anything else (and ``SDD_LEAN_DECODE=0``) keeps the stock call.
"""

from __future__ import annotations

import importlib

from .kernel import DecodeAttention, decode_attention_kernel, env_switch
from .kv_cache import full_attention_only

#: model types whose decoder layer is the Llama layer (Qwen3 adds a norm on query and key heads)
LAYER_TYPES = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
}


def _kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def lean_decode_enabled() -> bool:
    """False when ``SDD_LEAN_DECODE=0`` (every step then goes through the stock forward)."""
    return env_switch("SDD_LEAN_DECODE")


class LeanDecodeStep:
    """One forward pass of new tokens against a preallocated KV cache, for a supported model.

    Build it with :meth:`for_model` (None when the model or the machine is not supported). Calling
    it returns the ``[B, T, V]`` logits that ``model(input_ids=..., position_ids=...,
    past_key_values=cache, ...)`` would, given the column promise of the kernel: query ``i`` of row
    ``b`` attends exactly ``[first_columns[b], stop_columns[b] + i)``.
    """

    def __init__(self, model, kernel) -> None:
        self.model = model
        self.base = model.model
        self.kernel = kernel
        config = model.config
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.qk_norm = hasattr(self.base.layers[0].self_attn, "q_norm")
        self.group = config.num_attention_heads // _kv_heads(config)

    def fits(self, tokens_per_row: int) -> bool:
        """Whether a call with this many new tokens a row fits the kernel (else use the stock
        forward for that call)."""
        return DecodeAttention.fits(self.group, tokens_per_row, self.head_dim)

    @classmethod
    def for_model(cls, model) -> LeanDecodeStep | None:
        """The step for ``model``, or None: unsupported architecture, modified layer, norm or
        MLP classes, sliding or non-attention layers, not fp32 on CPU, kernel unavailable, or
        turned off."""
        import torch

        config = model.config
        layer_class = LAYER_TYPES.get(getattr(config, "model_type", None))
        if layer_class is None or not lean_decode_enabled() or not full_attention_only(config):
            return None
        base = getattr(model, "model", None)
        layers = getattr(base, "layers", None)
        if layers is None or getattr(model, "lm_head", None) is None or len(layers) == 0:
            return None
        modeling = importlib.import_module(
            f"transformers.models.{config.model_type}.modeling_{config.model_type}"
        )
        prefix = layer_class.removesuffix("DecoderLayer")
        stock = getattr(modeling, layer_class, None)
        norm, mlp = getattr(modeling, f"{prefix}RMSNorm", None), getattr(modeling, f"{prefix}MLP", None)
        if stock is None or norm is None or mlp is None or getattr(model, "use_kernels", False):
            return None
        for layer in layers:  # stock classes (not e.g. Liger's): the step inlines their arithmetic
            modules = (layer, layer.input_layernorm, layer.post_attention_layernorm, layer.mlp)
            if tuple(map(type, modules)) != (stock, norm, norm, mlp):
                return None
        if type(base.norm) is not norm:
            return None
        if getattr(config, "head_dim", None) is None and config.hidden_size % config.num_attention_heads:
            return None
        if config.num_attention_heads % _kv_heads(config):
            return None
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
            return None
        kernel = decode_attention_kernel()
        if kernel is None:
            return None
        return cls(model, kernel)

    def __call__(self, input_ids, position_ids, cache, first_columns, stop_columns=None):
        """``[B, T, V]`` logits of ``input_ids`` ``[B, T]`` at ``position_ids`` ``[B, T]``; the
        keys/values go into ``cache`` (a cache of preallocated layers) as its ``update`` places them.

        The arithmetic is the stock modules', rewritten with fewer tensor operations where that
        cannot change a bit: the RMS norms inline (``weight * (x * rsqrt(mean(x²) + eps))``, the
        same operations without the no-op dtype casts), and the rotary embedding as
        ``x * cos + roll(x, D/2) * sin'`` with ``sin'`` = ``sin`` with its first half negated once a
        step, which equals ``x * cos + cat(-x2, x1) * sin`` exactly (negation commutes with
        rounding)."""
        import torch

        batch, new = input_ids.shape
        shape = (batch, new, -1, self.head_dim)
        half = self.head_dim // 2
        x = self.base.embed_tokens(input_ids)
        cos, sin = self.base.rotary_emb(x, position_ids)
        cos = cos.unsqueeze(1)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
        for index, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            h = _rms_norm(layer.input_layernorm, x)
            query = attn.q_proj(h).view(shape)
            key = attn.k_proj(h).view(shape)
            value = attn.v_proj(h).view(shape).transpose(1, 2)
            if self.qk_norm:
                query, key = attn.q_norm(query), attn.k_norm(key)
            query, key = query.transpose(1, 2), key.transpose(1, 2)
            query = query * cos + query.roll(half, -1) * sin
            key = key * cos + key.roll(half, -1) * sin
            cache_layer = cache.layers[index]
            key, value = cache_layer.update(key, value, index)
            shared = getattr(cache_layer, "shared_columns", 0)
            out = self.kernel(query, key, value, first_columns, attn.scaling, stop_columns, shared)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, new, -1).contiguous())
            h = _rms_norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
        return self.model.lm_head(_rms_norm(self.base.norm, x))


def _rms_norm(norm, x):
    """``LlamaRMSNorm.forward`` of an fp32 ``x`` (the same operations, without the no-op casts)."""
    import torch

    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))

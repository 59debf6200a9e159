"""The ``hf`` backend's decode engine: padding-free prefill, a preallocated KV cache, GQA-aware
decode attention, and rows that leave the batch when they finish.

:func:`decode_batch` is a plain greedy/sampling loop over ``model(...)`` calls; everything
model-specific stays in transformers (the model, its masks, its cache API). What it changes
against ``model.generate`` on CPU, measured on the default model (``benchmarks/distill_throughput.py``):

- **Prefill without padding.** A length-sorted batch is prefilled in small groups of similar
  length and copied right-aligned into the batch cache, so a 435-token prompt does not make 31
  shorter ones pay for 435 positions.
- **No cache copies per token.** ``PreallocatedLayer`` writes each new key/value into a
  buffer sized for prompt + ``max_new_tokens``; transformers' ``DynamicLayer`` concatenates the
  whole cache at every step (half of the decode time in a profile).
- **GQA without ``repeat_kv``** (below).
- **Finished rows leave the batch** (compacted once a quarter of the rows are done), instead of
  being computed until the longest row ends.

GQA-aware SDPA for single-token decode steps (registered as ``sdd_gqa_sdpa``):
transformers' ``sdpa`` attention expands the key/value heads of a grouped-query model to the
number of query heads (``repeat_kv``) before every call, unless it can pass ``enable_gqa`` (CUDA
without a mask). On CPU, with a padding mask, that means copying the whole KV cache ``G`` times
at every generated token. For a decode step (one query per row) the expansion is unnecessary: the
``G`` query heads that share a key/value head are stacked as ``G`` queries against that head, so
attention runs on the cache as it is. The result is the same computation (scores, softmax and
weighted sum per query head); only the summation order inside the kernel may differ.

Prefill (several queries per row) and models without grouped heads go to the stock ``sdpa``
function unchanged. The mask is built by transformers' own ``sdpa_mask``.
"""

from __future__ import annotations

ATTENTION_NAME = "sdd_gqa_sdpa"
_registered = False


def gqa_sdpa_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """``sdpa`` attention with key/value heads left unexpanded when there is one query per row.

    Shapes as transformers passes them: ``query`` ``[B, H, Q, D]``, ``key``/``value``
    ``[B, KVH, L, D]``, ``attention_mask`` ``[B, 1, Q, L]`` (bool) or None. Returns
    ``([B, Q, H, D], None)`` like the stock function.
    """
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or kv_heads == heads or (dropout and module.training):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    group = heads // kv_heads
    # query head h uses key/value head h // group (repeat_kv's layout): fold the group into Q
    q = query.reshape(batch, kv_heads, group, head_dim)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, -1:, : key.shape[2]]  # [B, 1, 1, L] broadcasts over the group
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def register_gqa_attention() -> str:
    """Register ``sdd_gqa_sdpa`` (attention and mask) with transformers once; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, gqa_sdpa_attention_forward)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
    return ATTENTION_NAME


def _preallocated_layer_class():
    """:class:`PreallocatedLayer`, defined lazily so importing this module does not import torch."""
    global PreallocatedLayer
    if PreallocatedLayer is not None:
        return PreallocatedLayer
    import torch
    from transformers.cache_utils import DynamicLayer

    class _PreallocatedLayer(DynamicLayer):
        """A full-attention KV cache layer with a fixed capacity, written in place.

        A transformers ``DynamicLayer`` (the models and mask builders treat it as one) that keeps
        ``[B, KVH, capacity, D]`` buffers; ``keys``/``values`` are views of the filled part, so
        appending a token costs one slice write instead of concatenating the whole cache.
        """

        def __init__(self, keys, values, capacity: int) -> None:
            super().__init__()
            batch, kv_heads, length, head_dim = keys.shape
            if capacity < length:
                raise ValueError(f"capacity {capacity} < prefilled length {length}")
            self.dtype, self.device = keys.dtype, keys.device
            self._k = keys.new_zeros((batch, kv_heads, capacity, head_dim))
            self._v = torch.zeros_like(self._k)
            self._k[:, :, :length] = keys
            self._v[:, :, :length] = values
            self._len = length
            self.is_initialized = True
            self._views()

        def _views(self) -> None:
            self.keys = self._k[:, :, : self._len]
            self.values = self._v[:, :, : self._len]

        def lazy_initialization(self, key_states, value_states) -> None:  # already initialized
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            """Append ``[B, KVH, T, D]`` states in place; return the filled views."""
            new = key_states.shape[-2]
            if self._len + new > self._k.shape[2]:
                raise RuntimeError(f"KV cache capacity {self._k.shape[2]} exceeded")
            self._k[:, :, self._len : self._len + new] = key_states
            self._v[:, :, self._len : self._len + new] = value_states
            self._len += new
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._len

        def get_max_length(self) -> int:
            return self._k.shape[2]

        def crop(self, tokens_to_remove: int) -> None:
            self._len = max(0, self._len - abs(tokens_to_remove)) if tokens_to_remove else self._len
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

        def batch_select_indices(self, indices) -> None:
            """Keep only the batch rows ``indices`` (copies the buffers once)."""
            self._k = self._k.index_select(0, indices)
            self._v = self._v.index_select(0, indices)
            self._views()

        def reorder_cache(self, beam_idx) -> None:
            self.batch_select_indices(beam_idx)

        def reset(self) -> None:
            self._len = 0
            self._views()

    PreallocatedLayer = _PreallocatedLayer
    return PreallocatedLayer


#: set by :func:`_preallocated_layer_class` on first use
PreallocatedLayer = None


def _full_attention_only(config) -> bool:
    """True when every decoder layer is plain full attention (no sliding window, no linear layers)."""
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None)
    if types:
        return all(t == "full_attention" for t in types)
    return not getattr(text, "sliding_window", None) or not getattr(text, "use_sliding_window", True)


def _prefill(model, input_ids, attention_mask, capacity: int, group: int):
    """Prefill a left-padded, length-sorted batch in groups of ``group`` rows without padding to
    the whole batch's longest row. Returns ``(cache, mask, last_logits)``; the cache holds every
    row right-aligned in buffers of ``capacity`` positions (prompt + new tokens)."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    rows, width = input_ids.shape
    lengths = attention_mask.sum(-1)
    keys: list[list] = []
    values: list[list] = []
    logits = []
    for start in range(0, rows, group):
        stop = min(start + group, rows)
        sub_width = int(lengths[start:stop].max())
        ids = input_ids[start:stop, width - sub_width :]
        sub_mask = attention_mask[start:stop, width - sub_width :]
        positions = (sub_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids,
            attention_mask=sub_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits.append(out.logits[:, -1, :])
        for layer_idx, layer in enumerate(cache.layers):
            if start == 0:
                keys.append([])
                values.append([])
            keys[layer_idx].append((layer.keys, sub_width))
            values[layer_idx].append(layer.values)
    layer_cls = _preallocated_layer_class()
    layers = []
    for layer_keys, layer_values in zip(keys, values):
        first = layer_keys[0][0]
        buf_k = first.new_zeros((rows, first.shape[1], width, first.shape[3]))
        buf_v = torch.zeros_like(buf_k)
        row = 0
        for (k, sub_width), v in zip(layer_keys, layer_values):
            n = k.shape[0]
            buf_k[row : row + n, :, width - sub_width :] = k
            buf_v[row : row + n, :, width - sub_width :] = v
            row += n
        layers.append(layer_cls(buf_k, buf_v, capacity))
    return Cache(layers=layers), attention_mask, torch.cat(logits, dim=0)


def decode_batch(
    model,
    input_ids,
    attention_mask,
    *,
    max_new_tokens: int,
    eos_ids,
    settings=None,
    generator=None,
    prefill_group: int = 4,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` after each left-padded row of a length-sorted batch.

    Returns one token list per row, ending at (and including) the row's first EOS. Greedy unless
    ``settings.do_sample`` (temperature and top-p through transformers' logits warpers, drawn
    with ``generator``). Models with sliding-window or non-attention layers use transformers'
    ``DynamicCache`` and a whole-batch prefill instead of the preallocated cache.
    """
    import torch
    from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    do_sample = bool(settings is not None and settings.do_sample)
    warpers = LogitsProcessorList()
    if do_sample:
        if settings.temperature and settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p is not None and settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))

    device = input_ids.device
    rows = input_ids.shape[0]
    eos = torch.tensor(sorted({int(i) for i in eos_ids}), device=device)
    out_tokens: list[list[int]] = [[] for _ in range(rows)]
    mask = attention_mask.to(torch.long)
    with torch.inference_mode():
        if _full_attention_only(model.config):
            cache, mask, logits = _prefill(
                model, input_ids, mask, input_ids.shape[1] + max_new_tokens, max(1, prefill_group)
            )
        else:
            cache = DynamicCache(config=model.config)
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :]
        next_pos = mask.sum(-1, keepdim=True)  # position of the next token of each row
        alive = torch.arange(rows, device=device)  # original row of each batch slot
        running = torch.ones(rows, dtype=torch.bool, device=device)  # slot not finished yet
        for step in range(max_new_tokens):
            logits = logits.float()
            if do_sample:
                probs = torch.softmax(warpers(None, logits), dim=-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                tokens = logits.argmax(dim=-1)
            for slot, token, live in zip(alive.tolist(), tokens.tolist(), running.tolist()):
                if live:
                    out_tokens[slot].append(token)
            if step == max_new_tokens - 1:
                break
            running &= ~torch.isin(tokens, eos)
            live_count = int(running.sum())
            if live_count == 0:
                break
            dead = running.numel() - live_count
            if dead and (dead >= max(1, running.numel() // 4) or live_count <= 2):
                keep = running.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, tokens, mask, next_pos = alive[keep], tokens[keep], mask[keep], next_pos[keep]
                running = running[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
    return out_tokens

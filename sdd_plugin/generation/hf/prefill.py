"""Prefill of a left-padded batch into the preallocated KV cache: the prompts' shared prefix
once, the rest in small groups of similar length, without the batch's padding."""

from __future__ import annotations

from .kv_cache import preallocated_layer_class


def common_prefix_length(input_ids, lengths) -> int:
    """Tokens every row of a left-padded batch starts with, leaving each row at least one more."""
    rows, width = input_ids.shape
    starts = [width - int(n) for n in lengths]
    limit = int(lengths.min()) - 1
    first = input_ids[0, starts[0] : starts[0] + limit]
    for i in range(1, rows):
        differs = (input_ids[i, starts[i] : starts[i] + limit] != first[:limit]).nonzero()
        if differs.numel():
            limit = int(differs[0])
        if limit <= 0:
            return 0
    return max(limit, 0)


def prefill(model, input_ids, attention_mask, capacity: int, group: int, min_shared: int = 8):
    """Prefill a left-padded, length-sorted batch into preallocated per-layer buffers.

    The prefix that every prompt shares (system prompt and template header), if at least
    ``min_shared`` tokens, is computed once and referenced by every row. The rest of each prompt is
    prefilled in groups of ``group`` rows of similar length, right-aligned, so no row pays for
    the padding of the batch's longest one. Returns ``(cache, mask, last_logits)``: each row's
    layout is that of its left-padded prompt (``[padding | shared prefix | own suffix]``), and
    ``mask`` is ``attention_mask``, so a row's real positions are one contiguous run.
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    rows, width = input_ids.shape
    lengths = attention_mask.sum(-1)
    shared = common_prefix_length(input_ids, lengths) if rows > 1 else 0
    if shared < min_shared:
        shared = 0
    prefix_kv = []
    if shared:
        start = width - int(lengths[0])
        prefix_cache = DynamicCache(config=model.config)
        model(
            input_ids=input_ids[:1, start : start + shared],
            position_ids=torch.arange(shared, device=input_ids.device)[None],
            past_key_values=prefix_cache,
            use_cache=True,
            logits_to_keep=1,
        )
        prefix_kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
    suffix_len = lengths - shared
    cols = torch.arange(width, device=input_ids.device)
    mask = (cols[None] >= width - suffix_len[:, None]).to(attention_mask.dtype)  # suffix columns

    buffers: list[tuple] = []
    logits = []
    for start in range(0, rows, group):
        stop = min(start + group, rows)
        n = stop - start
        sub_width = int(suffix_len[start:stop].max())
        ids = input_ids[start:stop, width - sub_width :]
        sub_mask = mask[start:stop, width - sub_width :]
        positions = shared + (sub_mask.cumsum(-1) - 1).clamp(min=0)
        if shared:
            cache = DynamicCache(
                [
                    (k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous())
                    for k, v in prefix_kv
                ],
                config=model.config,
            )
            call_mask = torch.cat([sub_mask.new_ones((n, shared)), sub_mask], dim=1)
        else:
            cache = DynamicCache(config=model.config)
            call_mask = sub_mask
        out = model(
            input_ids=ids,
            attention_mask=call_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits.append(out.logits[:, -1, :])
        for layer_idx, layer in enumerate(cache.layers):
            if len(buffers) <= layer_idx:  # first group: allocate the batch's buffers
                kv_heads, head_dim = layer.keys.shape[1], layer.keys.shape[3]
                buf_k = layer.keys.new_zeros((rows, kv_heads, capacity, head_dim))
                buffers.append((buf_k, torch.zeros_like(buf_k)))
            buf_k, buf_v = buffers[layer_idx]
            buf_k[start:stop, :, width - sub_width : width] = layer.keys[:, :, shared:]
            buf_v[start:stop, :, width - sub_width : width] = layer.values[:, :, shared:]
    layer_cls = preallocated_layer_class()
    layers = []
    starts = (width - lengths).tolist()  # each row's shared prefix goes just left of its suffix
    for layer_idx, (buf_k, buf_v) in enumerate(buffers):
        if shared:  # after the suffix blocks: overwrites padding columns of shorter rows only
            for row, start in enumerate(starts):
                buf_k[row, :, start : start + shared] = prefix_kv[layer_idx][0][0]
                buf_v[row, :, start : start + shared] = prefix_kv[layer_idx][1][0]
        layers.append(layer_cls(buf_k, buf_v, width, shared_columns=shared))
    return Cache(layers=layers), attention_mask, torch.cat(logits, dim=0)

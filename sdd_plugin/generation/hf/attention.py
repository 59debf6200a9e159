"""GQA-aware SDPA attention for decode steps, registered with transformers as ``sdd_gqa_sdpa``.

transformers' ``sdpa`` attention expands a grouped-query model's key/value heads to the number of
query heads (``repeat_kv``) before every call on CPU with a mask, i.e. copies the whole KV cache
``G`` times per generated token. For a few queries per row that is unnecessary: the ``G`` query
heads sharing a key/value head are stacked as ``G * Q`` queries against it, so attention runs on
the cache as it is (same scores, softmax and weighted sum; only the summation order may differ).
A call may also say which cache columns each row attends (``sdd_row_groups``,
``sdd_first_columns``), so the left padding of a length-sorted batch is not read; on CPU fp32 the
C kernel of :mod:`.kernel` then does the work. Prefill and models without grouped heads go to the
stock ``sdpa`` function; the mask is transformers' own ``sdpa_mask``.
"""

from __future__ import annotations

from .kernel import DecodeAttention, decode_attention_kernel

ATTENTION_NAME = "sdd_gqa_sdpa"
#: up to this many queries per row (decode steps, prompt-lookup verification) take the GQA path;
#: longer ones (prefill) go to the stock ``sdpa`` function
MAX_GQA_QUERIES = 16
#: rows per attention call in a decode step (:func:`row_groups`): each call reads the KV cache
#: from the first column its rows use
ATTENTION_ROWS_PER_CALL = 8
_registered = False


def row_groups(first_columns: list[int], rows_per_call: int = ATTENTION_ROWS_PER_CALL) -> list[tuple]:
    """``(start, stop, column)`` runs of neighbouring batch rows and the first cache column any
    row of the run attends (rows are sorted by length, so a run's rows start at similar columns)."""
    n, size = len(first_columns), max(1, rows_per_call)
    return [(a, min(a + size, n), min(first_columns[a : a + size])) for a in range(0, n, size)]


def gqa_sdpa_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sdd_row_groups=None,
    sdd_first_columns=None,
    sdd_stop_columns=None,
    **kwargs,
):
    """``sdpa`` attention with key/value heads left unexpanded when there are few queries per row.

    Shapes as transformers passes them: ``query`` ``[B, H, Q, D]``, ``key``/``value``
    ``[B, KVH, L, D]``, ``attention_mask`` ``[B, 1, Q, L]`` (bool) or None. Returns
    ``([B, Q, H, D], None)`` like the stock function. ``sdd_row_groups`` (from
    :func:`row_groups`, passed through the model's kwargs) splits the batch into runs of rows
    that each read the cache from their run's first column: every column left of it is masked
    for all rows of the run, so the result is the same with less of the cache read.
    ``sdd_first_columns`` (a ``[B]`` long tensor) is the caller's promise that query ``i`` of row
    ``b`` attends exactly the columns ``[first_columns[b], stop_columns[b] + i)``
    (``sdd_stop_columns``, default ``L - Q + 1``): the call then runs the C kernel of
    :mod:`.kernel` (the mask unused) when it is available.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, heads, kv_heads = query.shape[2], query.shape[1], key.shape[1]
    causal_without_mask = q_len > 1 and attention_mask is None  # the stock path sets is_causal
    if q_len > MAX_GQA_QUERIES or causal_without_mask or (dropout and module.training):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if sdd_first_columns is not None and not (dropout and module.training):
        kernel = decode_attention_kernel()
        if kernel is not None and DecodeAttention.supports(query, key, value):
            out = kernel(query, key, value, sdd_first_columns, scaling, stop_columns=sdd_stop_columns)
            return out.transpose(1, 2), None
    if sdd_row_groups and (len(sdd_row_groups) > 1 or sdd_row_groups[0][2] > 0):
        mask = _additive_mask(attention_mask, query.dtype)
        mask = None if mask is None else mask[:, :, -q_len:, : key.shape[2]]
        outs = [
            _gqa_sdpa(
                query[a:b],
                key[a:b, :, c:],
                value[a:b, :, c:],
                None if mask is None else mask[a:b, :, :, c:],
                scaling,
            )
            for a, b, c in sdd_row_groups
        ]
        return torch.cat(outs, dim=0), None
    if kv_heads == heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return _gqa_sdpa(query, key, value, attention_mask, scaling), None


_ADDITIVE_MASK: list = [None, None]  # [bool mask it was made from, additive mask]


def _additive_mask(mask, dtype):
    """``mask`` (bool) as an additive 0/-inf mask, made once per model call: every layer gets the
    same mask object, and SDPA would otherwise convert it in each of its calls."""
    import torch

    if mask is None or mask.dtype != torch.bool:
        return mask
    source, additive = _ADDITIVE_MASK
    if source is not mask or additive.dtype != dtype:
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        _ADDITIVE_MASK[:] = [mask, additive]
    return additive


def release_additive_mask() -> None:
    """Drop the remembered additive mask (so the last batch's mask is not kept alive)."""
    _ADDITIVE_MASK[:] = [None, None]


def _gqa_sdpa(query, key, value, attention_mask, scaling):
    """SDPA of ``[B, H, Q, D]`` queries on ``[B, KVH, L, D]`` keys/values (``KVH`` divides ``H``)
    without expanding the key/value heads; ``attention_mask`` ``[B, 1, >=Q, >=L]`` bool or None.
    Returns ``[B, Q, H, D]``."""
    import torch.nn.functional as F

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # query head h uses key/value head h // group (repeat_kv's layout): fold the group into the
    # query axis, [B, KVH, G * Q, D], query row g * Q + j = head (kvh, g), position j
    q = query.reshape(batch, kv_heads, group * q_len, head_dim)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, -q_len:, : key.shape[2]]  # [B, 1, Q, L]
        if q_len > 1:  # the same Q mask rows for every head of the group
            mask = mask.unsqueeze(2).expand(-1, -1, group, -1, -1).reshape(batch, 1, group * q_len, -1)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()


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


def reads_row_columns(model, first_columns) -> bool:
    """Whether decode steps may read each row's cache from its first real column: the
    preallocated cache (``first_columns`` known) and ``sdd_gqa_sdpa`` attention."""
    return first_columns is not None and getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME


def row_column_kwargs(model, first_columns, stop_columns=None) -> dict:
    """``sdd_row_groups`` and ``sdd_first_columns`` (with ``sdd_stop_columns`` when given) for a
    model call when the model runs ``sdd_gqa_sdpa`` attention: each row attends every column from
    its first real one on, up to its new tokens."""
    import torch

    if not reads_row_columns(model, first_columns):
        return {}
    kwargs = {
        "sdd_row_groups": row_groups(first_columns),
        "sdd_first_columns": torch.tensor(first_columns, dtype=torch.long),
    }
    if stop_columns is not None:
        kwargs["sdd_stop_columns"] = stop_columns
    return kwargs

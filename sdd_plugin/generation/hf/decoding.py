"""The ``hf`` backend's decode engine: :func:`decode_batch`, a greedy/sampling loop over
``model(...)`` calls on a length-sorted, left-padded batch.

Everything model-specific stays in transformers (the model, its masks, its cache API). What the
engine does differently from ``model.generate``: it prefills without the batch's padding and
computes the prompts' shared prefix once (:mod:`.prefill`); it writes keys/values into a
preallocated cache instead of concatenating it every step (:mod:`.kv_cache`); decode attention
reads only each row's own columns and leaves grouped key/value heads unexpanded (:mod:`.attention`,
the C kernel of :mod:`.kernel`); on CPU fp32 the linears run as fused oneDNN GEMMs
(:mod:`.cpu_linears`) and a supported model's step skips transformers' per-call plumbing
(:mod:`.lean_step`); finished rows leave the batch; the last rows may decode with prompt-lookup
drafts (:mod:`.prompt_lookup`). Greedy tokens equal per-row ``generate``'s.
"""

from __future__ import annotations

from .attention import reads_row_columns, release_additive_mask, row_column_kwargs
from .cpu_linears import CpuLinears
from .kv_cache import full_attention_only, should_compact
from .lean_step import LeanDecodeStep
from .prefill import prefill
from .prompt_lookup import decode_prompt_lookup, lookup_takes_over
from .sampling import logits_warpers, next_tokens
from .top_logprobs import TopLogprobs


def _lean_step(model, first_cols):
    """:class:`~.lean_step.LeanDecodeStep` for a model decoding on the preallocated cache with
    ``sdd_gqa_sdpa`` attention, else None (the stock forward)."""
    if not reads_row_columns(model, first_cols):
        return None
    return LeanDecodeStep.for_model(model)


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
    prompt_lookup: int = 0,
    top_logprobs: TopLogprobs | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` after each left-padded row of a length-sorted batch.

    Returns one token list per row, ending at (and including) the row's first EOS. Greedy unless
    ``settings.do_sample`` (temperature and top-p through transformers' logits warpers, drawn
    with ``generator``). ``prompt_lookup`` > 0: once few rows still run
    (:func:`~.prompt_lookup.lookup_takes_over`), the rest is decoded with up to that many draft
    tokens a row per step, taken from the row's own prompt and output and verified in one pass
    (:func:`~.prompt_lookup.decode_prompt_lookup`). Models with sliding-window or non-attention
    layers use transformers' ``DynamicCache`` and a whole-batch prefill instead of the
    preallocated cache (and no prompt lookup). ``top_logprobs`` (a :class:`~.top_logprobs.TopLogprobs`
    for the batch's rows) receives the logits of every token appended to a row; the tokens are the
    same with or without it.
    """
    import torch
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    do_sample = bool(settings is not None and settings.do_sample)
    warpers = logits_warpers(settings)

    device = input_ids.device
    rows = input_ids.shape[0]
    eos = torch.tensor(sorted({int(i) for i in eos_ids}), device=device)
    out_tokens: list[list[int]] = [[] for _ in range(rows)]
    mask = attention_mask.to(torch.long)
    if prompt_lookup < 0:
        raise ValueError(f"prompt_lookup must be >= 0, got {prompt_lookup}")
    full_attention = full_attention_only(model.config)
    with torch.inference_mode(), CpuLinears(model):
        if full_attention:
            capacity = input_ids.shape[1] + max_new_tokens + prompt_lookup + 1
            cache, mask, logits = prefill(model, input_ids, mask, capacity, max(1, prefill_group))
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
        # each slot's first real column: the attention of a decode step skips the columns left
        # of it (on the preallocated cache, whose rows are left-padded prompts)
        first_cols = (mask.shape[1] - next_pos[:, 0]).tolist() if full_attention else None
        lean = _lean_step(model, first_cols)
        first_tensor = None if first_cols is None else torch.tensor(first_cols, dtype=torch.long)
        alive = torch.arange(rows, device=device)  # original row of each batch slot
        running = torch.ones(rows, dtype=torch.bool, device=device)  # slot not finished yet
        for step in range(max_new_tokens):
            live_count = int(running.sum())
            if prompt_lookup and full_attention and lookup_takes_over(live_count):
                # few rows left: the rest with prompt-lookup drafts (several tokens a row per step)
                keep = running.nonzero().squeeze(1)
                if live_count < running.numel():
                    cache.batch_select_indices(keep)
                slots = alive[keep].tolist()
                rest = decode_prompt_lookup(
                    model,
                    cache,
                    mask[keep],
                    logits[keep],
                    [input_ids[r][attention_mask[r].bool()].tolist() + out_tokens[r] for r in slots],
                    max_new_tokens=max_new_tokens - step,
                    eos=eos,
                    draft_tokens=prompt_lookup,
                    warpers=warpers,
                    do_sample=do_sample,
                    generator=generator,
                    lean=lean,
                    top_logprobs=None if top_logprobs is None else top_logprobs.view(slots),
                )
                for r, tokens in zip(slots, rest):
                    out_tokens[r].extend(tokens)
                break
            tokens = next_tokens(logits, warpers, do_sample, generator)
            if top_logprobs is not None:
                live_slots = [slot for slot, live in zip(alive.tolist(), running.tolist()) if live]
                top_logprobs.add(live_slots, logits[running])
            for slot, token, live in zip(alive.tolist(), tokens.tolist(), running.tolist()):
                if live:
                    out_tokens[slot].append(token)
            if step == max_new_tokens - 1:
                break
            running &= ~torch.isin(tokens, eos)
            live_count = int(running.sum())
            if live_count == 0:
                break
            if should_compact(running.numel() - live_count, running.numel()):
                keep = running.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, tokens, mask, next_pos = alive[keep], tokens[keep], mask[keep], next_pos[keep]
                running = running[keep]
                if first_cols is not None:
                    first_cols = [first_cols[i] for i in keep.tolist()]
                    first_tensor = torch.tensor(first_cols, dtype=torch.long)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            if lean is not None and lean.fits(1):
                logits = lean(tokens[:, None], next_pos, cache, first_tensor)[:, -1, :]
            else:
                out = model(
                    input_ids=tokens[:, None],
                    attention_mask=mask,
                    position_ids=next_pos,
                    past_key_values=cache,
                    use_cache=True,
                    **row_column_kwargs(model, first_cols),
                )
                logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
    release_additive_mask()
    return out_tokens

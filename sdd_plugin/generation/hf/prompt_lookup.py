"""Prompt lookup for the engine's last rows: drafts from each row's own prompt and output,
verified in one forward pass per step."""

from __future__ import annotations

from .attention import row_column_kwargs
from .kv_cache import should_compact
from .sampling import next_tokens

#: prompt lookup verifies at most about this many tokens per step: each running row gets
#: ``min(k, LOOKUP_TOKENS_PER_STEP // rows - 1)`` drafts, so a full batch decodes plainly (its
#: steps already cost what they compute) and the few rows left at the end (often in a repetition
#: loop, which lookup drafts exactly) verify up to ``k`` at once
LOOKUP_TOKENS_PER_STEP = 96


def lookup_takes_over(running_rows: int) -> bool:
    """Whether prompt lookup should decode the rest of a batch with this many rows still running:
    once each of them gets at least one draft a step."""
    return 2 * running_rows <= LOOKUP_TOKENS_PER_STEP


class NgramIndex:
    """Prompt lookup drafts for one row: the tokens that followed the latest earlier occurrence of
    the row's last bigram (else its last token) in prompt + generated text."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self.bigram: dict[tuple[int, int], int] = {}
        self.unigram: dict[int, int] = {}
        self.extend(tokens)

    def extend(self, new: list[int]) -> None:
        """Append tokens; index every n-gram that now has a continuation."""
        toks = self.tokens
        for t in new:
            i = len(toks)  # index of t: the continuation of the n-grams ending at i - 1
            if i >= 1:
                self.unigram[toks[i - 1]] = i
            if i >= 2:
                self.bigram[(toks[i - 2], toks[i - 1])] = i
            toks.append(t)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` proposed next tokens (empty when nothing matches)."""
        toks = self.tokens
        at = self.bigram.get((toks[-2], toks[-1])) if len(toks) >= 2 else None
        if at is None:
            at = self.unigram.get(toks[-1]) if toks else None
        return [] if at is None else toks[at : at + k]


def decode_prompt_lookup(
    model,
    cache,
    layout_mask,
    first_logits,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos,
    draft_tokens: int,
    warpers,
    do_sample: bool,
    generator,
    lean=None,
    top_logprobs=None,
) -> list[list[int]]:
    """Decode with prompt lookup (Saxena 2023; ``prompt_lookup_num_tokens`` in transformers).

    Each step feeds every row its last token plus ``draft_tokens`` proposed by :class:`NgramIndex`
    and verifies them in one forward pass: greedy keeps the drafts up to the first that differs
    from the argmax (plus the argmax there), so the tokens are those of one-token-at-a-time greedy
    decoding; sampling accepts draft ``d`` with probability ``p(d)`` and otherwise samples from
    ``p`` with ``d`` removed (speculative sampling with a point-mass draft), so every token is
    still drawn from the model's distribution. Rows accept different counts, so each row writes its
    keys/values at its own cache columns and gets its own 4D mask. Rewrites copy much of the
    reference answer in their prompt, so drafts from it are often accepted. ``top_logprobs`` (a
    :class:`~.top_logprobs.TopLogprobs` over these rows) receives the logits of every emitted token.
    """
    import torch

    device = layout_mask.device
    rows, width = layout_mask.shape
    k = draft_tokens
    capacity = cache.layers[0].get_max_length()
    # columns < col[b] that row b attends: its prompt layout, then everything it generated
    valid = torch.ones((rows, capacity), dtype=torch.bool, device=device)
    valid[:, :width] = layout_mask.bool()
    col = torch.full((rows,), width, dtype=torch.long, device=device)  # next write column
    pos = layout_mask.sum(-1)  # next position id
    first_cols = (width - pos).tolist()  # each slot's first real column (left padding before it)
    out_tokens: list[list[int]] = [[] for _ in range(rows)]
    eos_set = {int(t) for t in eos.tolist()}

    first = next_tokens(first_logits, warpers, do_sample, generator).tolist()
    if top_logprobs is not None:
        top_logprobs.add(list(range(rows)), first_logits)
    alive = list(range(rows))  # original row of each batch slot
    running = []  # slot still generating (finished slots idle until the next compaction)
    index = []
    last = []
    for r in range(rows):
        out_tokens[r].append(first[r])
        running.append(first[r] not in eos_set and max_new_tokens > 1)
        index.append(NgramIndex(prompts[r] + [first[r]]))
        last.append(first[r])
    while True:
        live = sum(running)
        if live == 0:
            break
        n = len(alive)
        if should_compact(n - live, n):
            keep_slots = [i for i in range(n) if running[i]]
            keep = torch.tensor(keep_slots, dtype=torch.long, device=device)
            cache.batch_select_indices(keep)
            valid, col, pos = valid[keep], col[keep], pos[keep]
            alive, index, last, first_cols = (
                [xs[i] for i in keep_slots] for xs in (alive, index, last, first_cols)
            )
            running = [True] * len(keep_slots)
            n = len(alive)
        # fewer drafts while many rows run: verifying k tokens costs more than it saves there
        budget = min(k, max(0, LOOKUP_TOKENS_PER_STEP // live - 1))
        drafts = [idx.draft(budget) if run else [] for idx, run in zip(index, running)]
        width_q = 1 + max(len(d) for d in drafts)
        kk = width_q - 1
        inp = torch.tensor(
            [[t, *d, *([t] * (kk - len(d)))] for t, d in zip(last, drafts)], dtype=torch.long, device=device
        )  # filler after short drafts: verified like any draft
        offsets = torch.arange(width_q, device=device)
        write = col[:, None] + offsets  # [n, q]
        for layer in cache.layers:
            layer.write_columns = write
        try:
            # row b's query i attends [first column, col[b] + i]: its layout, what it kept, and
            # its new tokens up to i (rejected drafts' columns are rewritten before any read)
            if lean is not None and lean.fits(width_q):
                first = torch.tensor(first_cols, dtype=torch.long)
                logits = lean(inp, pos[:, None] + offsets, cache, first, stop_columns=col + 1).float()
            else:
                span = int(write.max()) + 1
                cols = torch.arange(span, device=device)
                old = valid[:, :span] & (cols[None] < col[:, None])  # [n, span]
                new = (cols[None, None] >= col[:, None, None]) & (cols[None, None] <= write[:, :, None])
                logits = model(
                    input_ids=inp,
                    attention_mask=(old[:, None, :] | new)[:, None],  # [n, 1, q, span]
                    position_ids=pos[:, None] + offsets,
                    past_key_values=cache,
                    use_cache=True,
                    **row_column_kwargs(model, first_cols, stop_columns=col + 1),
                ).logits.float()
        finally:
            for layer in cache.layers:
                layer.write_columns = None
        draft_t = inp[:, 1:]
        rows_idx = torch.arange(n, device=device)
        if do_sample:
            probs = torch.softmax(warpers(None, logits.reshape(n * width_q, -1)), dim=-1).reshape(
                n, width_q, -1
            )
            p_draft = probs[:, :kk].gather(2, draft_t[:, :, None]).squeeze(2)  # [n, kk]
            u = torch.rand((n, kk), generator=generator, device=device)
            accepted = (u < p_draft).long().cumprod(1).sum(1)  # [n]
            residual = probs[rows_idx, accepted]  # p at the first rejection (or the bonus position)
            rej = (accepted < kk).nonzero().squeeze(1)
            residual[rej, draft_t[rej, accepted[rej]]] = 0.0  # a rejected draft is never resampled
            bonus = torch.multinomial(residual / residual.sum(-1, keepdim=True), 1, generator=generator)[:, 0]
        else:
            target = logits.argmax(dim=-1)  # [n, q]
            accepted = (draft_t == target[:, :kk]).long().cumprod(1).sum(1)
            bonus = target[rows_idx, accepted]
        acc, bon, dr = accepted.tolist(), bonus.tolist(), draft_t.tolist()
        for slot in range(n):
            if not running[slot]:
                continue
            r = alive[slot]
            emitted = (dr[slot][: acc[slot]] + [bon[slot]])[: max_new_tokens - len(out_tokens[r])]
            stop = next((j for j, t in enumerate(emitted) if t in eos_set), None)
            if stop is not None:
                emitted = emitted[: stop + 1]
            out_tokens[r].extend(emitted)
            if top_logprobs is not None:  # emitted token j was chosen from the logits of query j
                top_logprobs.extend(r, logits[slot, : len(emitted)])
            if stop is not None or len(out_tokens[r]) >= max_new_tokens:
                running[slot] = False
            else:
                index[slot].extend(emitted)
                last[slot] = emitted[-1]
        # finished slots stay where they are (they idle, rewriting their own columns, until compaction)
        advance = (accepted + 1) * torch.tensor(running, dtype=torch.long, device=device)
        col, pos = col + advance, pos + advance
    return out_tokens

"""Multiple-choice accuracy (ARC-Easy, HellaSwag) with one context pass shared by the choices.

Each item's context runs once; its KV cache is then repeated for the item's choices and the
continuations run batched against it. Requests are built as lm-eval builds them (the prompts of
``tasks/sdd_arc_easy.yaml`` and ``tasks/sdd_hellaswag.yaml``, the ``" "`` target delimiter,
trailing context spaces moved into the continuation, the continuation's tokens taken from the
tokenised ``context + continuation``), and ``acc`` / ``acc_norm`` are lm-eval's: argmax of the
summed log-likelihood, resp. of the log-likelihood over the choice's length in characters
(``acc_bytes``: over its UTF-8 bytes). Per-item correctness is kept for paired bootstraps
(:func:`paired_accuracy_gap`).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .local_data import data_file

__all__ = [
    "CHOICE_TASKS",
    "ChoiceItem",
    "arc_easy_items",
    "choice_loglikelihoods",
    "evaluate_choices",
    "hellaswag_items",
    "paired_accuracy_gap",
    "score_choices",
]

#: scored continuation positions whose full-vocabulary log-probabilities are materialised at once
POSITIONS_PER_CHUNK = 256


@dataclass(frozen=True)
class ChoiceItem:
    """One question: the context, the choice texts, the index of the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int
    delimiter: str = " "


# --------------------------------------------------------------------------------------- data


def arc_easy_items(path: str | os.PathLike | None = None, limit: int | None = None) -> list[ChoiceItem]:
    """ARC-Easy test items in file order, prompted as ``sdd_arc_easy``: ``"Question: {stem}\\nAnswer:"``.
    ``path``: ``ARC-Easy-Test.jsonl`` or the data root."""
    file = data_file(path, "arc/ARC-Easy-Test.jsonl")
    items = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(items) >= limit:
                break
            try:
                row = json.loads(line)
                choices = row["question"]["choices"]
                labels = [str(c["label"]) for c in choices]
                gold = labels.index(str(row["answerKey"]))
                items.append(
                    ChoiceItem(
                        f"Question: {row['question']['stem']}\nAnswer:",
                        tuple(c["text"] for c in choices),
                        gold,
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{file}:{n}: not an ARC row with a valid answerKey ({exc!r})") from exc
    return items


def hellaswag_items(path: str | os.PathLike | None = None, limit: int | None = None) -> list[ChoiceItem]:
    """HellaSwag validation items in order, from the preprocessed 6-lines-per-task text file
    (context, label, four endings), prompted as ``sdd_hellaswag``. ``path``: the ``.txt.gz`` or the
    data root."""
    file = data_file(path, "hellaswag/hellaswag_val_full.txt.gz")
    with gzip.open(file, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) % 6:
        raise ValueError(f"{file}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    items = []
    for i in range(0, len(lines), 6):
        if limit is not None and len(items) >= limit:
            break
        ctx, label, *endings = lines[i : i + 6]
        if label.strip() not in {"0", "1", "2", "3"}:
            raise ValueError(f"{file}: line {i + 2}: label {label!r} is not 0-3")
        items.append(ChoiceItem(ctx.strip(), tuple(e.strip() for e in endings), int(label)))
    return items


#: task name -> item reader
CHOICE_TASKS = {"arc_easy": arc_easy_items, "hellaswag": hellaswag_items}


# ------------------------------------------------------------------------------------ scoring


def _encode(tokenizer, item: ChoiceItem, index: int) -> tuple[list[int], list[list[int]]]:
    """lm-eval's ``_encode_pair`` for each choice: (context ids, [continuation ids])."""
    context = item.context
    if not context:
        raise ValueError(f"item {index}: empty context")
    bos = tokenizer.bos_token

    def enc(text: str) -> list[int]:
        kwargs = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
        return list(tokenizer.encode(text, **kwargs))

    n_spaces = len(context) - len(context.rstrip())
    moved = context[len(context) - n_spaces :] if n_spaces else ""
    context = context[: len(context) - n_spaces]
    ctx = enc(context)
    conts = []
    for c, choice in enumerate(item.choices):
        cont = enc(context + moved + item.delimiter + choice)[len(ctx) :]
        if not cont or not ctx:
            raise ValueError(f"item {index}, choice {c}: the context or the continuation has no tokens")
        conts.append(cont)
    return ctx, conts


def _check(items: Sequence[ChoiceItem], batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not items:
        raise ValueError("no items to score")
    for i, it in enumerate(items):
        if not it.choices or not 0 <= it.gold < len(it.choices):
            raise ValueError(f"item {i}: gold index {it.gold} for {len(it.choices)} choices")
        if any(not c for c in it.choices):
            raise ValueError(f"item {i}: an empty choice")


def choice_loglikelihoods(
    model,
    tokenizer,
    items: Sequence[ChoiceItem],
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[list[float]]:
    """Summed log-likelihood of every choice's continuation given its item's context.

    ``batch_size`` items per step: their contexts (all but the last token) run once, left-padded;
    the cache is repeated per choice and ``[last context token] + continuation`` runs batched
    against it, right-padded."""
    import torch
    from tqdm.auto import tqdm

    from .divergence import log_probs_from_hidden

    _check(items, batch_size)
    encoded = [_encode(tokenizer, it, i) for i, it in enumerate(items)]
    limit = getattr(model.config, "max_position_embeddings", None)
    for i, (ctx, conts) in enumerate(encoded):
        longest = len(ctx) + max(len(c) for c in conts) - 1
        if limit and longest > limit:
            raise ValueError(f"item {i}: {longest} tokens exceed the model's {limit} positions")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, device = model.get_decoder(), model.get_output_embeddings().weight.device
    out: list[list[float]] = [[] for _ in items]
    order = sorted(range(len(items)), key=lambda i: -len(encoded[i][0]))
    bar = tqdm(total=len(order), desc="choices", unit="item", disable=not show_progress, dynamic_ncols=True)
    with torch.inference_mode():
        for b0 in range(0, len(order), batch_size):
            batch = order[b0 : b0 + batch_size]
            ctxs = [encoded[i][0] for i in batch]
            w1 = max(len(c) for c in ctxs) - 1
            past, mask1 = None, torch.zeros((len(batch), 0), dtype=torch.long)
            if w1 > 0:
                ids1 = torch.full((len(batch), w1), pad, dtype=torch.long)
                mask1 = torch.zeros((len(batch), w1), dtype=torch.long)
                for r, c in enumerate(ctxs):
                    if len(c) > 1:
                        ids1[r, w1 - len(c) + 1 :] = torch.tensor(c[:-1])
                        mask1[r, w1 - len(c) + 1 :] = 1
                pos1 = (mask1.cumsum(-1) - 1).clamp(min=0)
                past = decoder(
                    input_ids=ids1.to(device),
                    attention_mask=mask1.to(device),
                    position_ids=pos1.to(device),
                    use_cache=True,
                ).past_key_values
            rows = [(r, c) for r, i in enumerate(batch) for c in range(len(encoded[i][1]))]
            conts = [encoded[batch[r]][1][c] for r, c in rows]
            w2 = max(len(c) for c in conts)
            ids2 = torch.full((len(rows), w2), pad, dtype=torch.long)
            mask2 = torch.zeros((len(rows), w2), dtype=torch.long)
            pos2 = torch.zeros((len(rows), w2), dtype=torch.long)
            sel_rows, sel_cols, targets = [], [], []
            for k, ((r, _), cont) in enumerate(zip(rows, conts)):
                seq = [ctxs[r][-1]] + cont[:-1]
                ids2[k, : len(seq)] = torch.tensor(seq)
                mask2[k, : len(seq)] = 1
                pos2[k] = len(ctxs[r]) - 1 + torch.arange(w2)
                sel_rows += [k] * len(cont)
                sel_cols += range(len(cont))
                targets += cont
            item_of_row = torch.tensor([r for r, _ in rows])
            if past is not None:
                past.batch_select_indices(item_of_row.to(device))
            mask = torch.cat([mask1[item_of_row], mask2], dim=1)
            hidden = decoder(
                input_ids=ids2.to(device),
                attention_mask=mask.to(device),
                position_ids=pos2.to(device),
                past_key_values=past,
                use_cache=past is not None,
            ).last_hidden_state
            rr, cc, tt = torch.tensor(sel_rows), torch.tensor(sel_cols), torch.tensor(targets)
            h = hidden[rr.to(device), cc.to(device)]
            sums = torch.zeros(len(rows), dtype=torch.float64)
            for c0 in range(0, len(rr), POSITIONS_PER_CHUNK):
                sl = slice(c0, c0 + POSITIONS_PER_CHUNK)
                lp = log_probs_from_hidden(model, h[sl]).cpu()
                sums.index_add_(0, rr[sl], lp.gather(1, tt[sl, None])[:, 0].double())
            for k, (r, _) in enumerate(rows):
                out[batch[r]].append(float(sums[k]))
            bar.update(len(batch))
    bar.close()
    return out


def _argmax(values: Sequence[float]) -> int:
    """Index of the first maximum (``numpy.argmax``'s tie rule, as lm-eval)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def score_choices(
    model: Any,
    items: Sequence[ChoiceItem],
    tokenizer=None,
    batch_size: int = 16,
    dtype: str = "float32",
    show_progress: bool = False,
) -> dict[str, Any]:
    """``acc``, ``acc_norm``, ``acc_bytes`` and per-item correctness and log-likelihoods.

    ``model``: a loaded HF causal LM, or a path / embedded name / LoRA adapter folder loaded in
    ``dtype``."""
    from .divergence import as_causal_lm, tokenizer_of

    _check(items, batch_size)  # before any weights load
    tokenizer = tokenizer_of(model, tokenizer)
    lm = as_causal_lm(model, dtype)
    t0 = time.perf_counter()
    lls = choice_loglikelihoods(lm, tokenizer, items, batch_size, show_progress)
    seconds = time.perf_counter() - t0
    correct, correct_norm, correct_bytes = [], [], []
    for it, ll in zip(items, lls):
        chars = [ll[i] / len(c) for i, c in enumerate(it.choices)]
        n_bytes = [ll[i] / len(c.encode("utf-8")) for i, c in enumerate(it.choices)]
        correct.append(int(_argmax(ll) == it.gold))
        correct_norm.append(int(_argmax(chars) == it.gold))
        correct_bytes.append(int(_argmax(n_bytes) == it.gold))
    n = len(items)
    return {
        "items": n,
        "acc": sum(correct) / n,
        "acc_norm": sum(correct_norm) / n,
        "acc_bytes": sum(correct_bytes) / n,
        "correct": correct,
        "correct_norm": correct_norm,
        "correct_bytes": correct_bytes,
        "loglikelihoods": lls,
        "seconds": seconds,
    }


def evaluate_choices(
    model: Any,
    task: str,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    tokenizer=None,
    batch_size: int = 16,
    dtype: str = "float32",
    show_progress: bool = False,
) -> dict[str, Any]:
    """:func:`score_choices` on ``task`` (``arc_easy``: the test split; ``hellaswag``: validation),
    its first ``limit`` items."""
    if task not in CHOICE_TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(CHOICE_TASKS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    items = CHOICE_TASKS[task](data_root, limit=limit)
    result = score_choices(model, items, tokenizer, batch_size, dtype, show_progress)
    return {"task": task, "dtype": dtype, **result}


def paired_accuracy_gap(
    correct_a: Sequence[float],
    correct_b: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``accuracy(a) - accuracy(b)`` in points with a paired bootstrap 95 % interval (each replicate
    resamples item indices once for both)."""
    import numpy as np

    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equally long, non-empty per-item lists, got {a.shape} and {b.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    diff = a - b
    lo, hi = np.percentile(100 * diff[idx].mean(1), [2.5, 97.5])
    return {
        "gap": float(100 * diff.mean()),
        "ci95": [float(lo), float(hi)],
        "acc_a": float(a.mean()),
        "acc_b": float(b.mean()),
        "items": len(a),
        "n_boot": n_boot,
    }

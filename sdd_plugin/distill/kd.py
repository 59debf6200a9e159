"""Logit-distillation targets for SDD + KD: the teacher's top-k log-probabilities at every token of
the distilled set, written in the layout axolotl's KD dataset type reads.

Axolotl's KD integration (``plugins: [axolotl.integrations.kd.KDPlugin]``, ``kd_trainer: true``)
reads rows of ``type: axolotl.integrations.kd.chat_template`` (its default loader, "v2"): the chat
``messages``, plus per token position a list of top-k log-probs (``logprobs_field``, here
``logprobs``) and the matching token ids (``target_token_ids``). The lists are aligned to the *end*
of the tokenized row (positions before them are padding, masked); a position counts where its
label is trained. Its trainer (axolotl 0.19) compares the student's logits *at* position ``p``
with the entry at ``p``, so the entry at ``p`` is the teacher's distribution of token ``p + 1``
(not of token ``p``, as vLLM's prompt log-probs are indexed).

Where the distributions come from (no extra teacher pass): an accepted rewrite's from the
generation pass (:class:`~sdd_plugin.interfaces.TokenLogprobs`, conditioned on the rewrite prompt
that showed the teacher the reference), a kept original's from the NLL meter's forward over it
(:class:`MeterTopK`, conditioned on the plain prompt). :func:`kd_targets` aligns them to the
tokens axolotl will see (the tokenizer's chat template over the final messages); a position the
teacher produced no distribution for (a final-answer line the stage appended, a token that
re-tokenized differently, the template's tokens after the end of the turn) gets a one-hot target
on its true token (log-prob 0, the other ``k - 1`` ids at :data:`HARD_LOGPROB`), which trains like
cross-entropy.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from ..interfaces import TokenLogprobs

__all__ = [
    "AXOLOTL_KD_PLUGIN",
    "AXOLOTL_KD_TYPE",
    "DEFAULT_TOP_K",
    "KD_NAME",
    "KDTargets",
    "LOGPROBS_FIELD",
    "MeterTopK",
    "TOKEN_IDS_FIELD",
    "TeacherTokens",
    "kd_targets",
    "pack_logprobs",
    "require_chat_template",
    "teacher_of_record",
    "unpack_logprobs",
    "write_kd_set",
]

#: The KD-ready set, written beside ``distilled.jsonl``.
KD_NAME = "kd.jsonl"
#: The axolotl dataset type and plugin that read / train on it.
AXOLOTL_KD_TYPE = "axolotl.integrations.kd.chat_template"
AXOLOTL_KD_PLUGIN = "axolotl.integrations.kd.KDPlugin"
#: Row fields: the dataset entry's ``logprobs_field`` and axolotl's fixed ``target_token_ids``.
LOGPROBS_FIELD = "logprobs"
TOKEN_IDS_FIELD = "target_token_ids"
DEFAULT_TOP_K = 20
#: Log-prob of the filler ids of a one-hot target: far below any real alternative, but finite after
#: axolotl re-normalises and re-scales by temperature (an exact -inf would make its loss NaN).
HARD_LOGPROB = -20.0
#: Log-probs are written rounded to this many decimals.
DECIMALS = 4


@dataclass
class TeacherTokens:
    """A token sequence the teacher scored, with its top-k distribution at each token."""

    token_ids: list[int]
    top_ids: list[list[int]]
    """Per token, the ids of the distribution it was predicted from, most probable first."""
    top_logprobs: list[list[float]]
    after: tuple[list[int], list[float]] | None = None
    """The distribution after the last token (the NLL meter has it; generation stops at EOS)."""


# ------------------------------------------------------------------------- the row cache's copy


def pack_logprobs(lp: TokenLogprobs) -> dict[str, Any]:
    """A compact JSON form of a generation's top-k (int32 ids, float32 log-probs, base64)."""
    import numpy as np

    k = len(lp.top_ids[0]) if lp.top_ids else 0
    return {
        "token_ids": list(lp.token_ids),
        "k": k,
        "ids": base64.b64encode(np.asarray(lp.top_ids, dtype="<i4").tobytes()).decode("ascii"),
        "values": base64.b64encode(np.asarray(lp.top_logprobs, dtype="<f4").tobytes()).decode("ascii"),
    }


def unpack_logprobs(packed: dict[str, Any]) -> TeacherTokens:
    """The inverse of :func:`pack_logprobs`."""
    import numpy as np

    n, k = len(packed["token_ids"]), int(packed["k"])
    ids = np.frombuffer(base64.b64decode(packed["ids"]), dtype="<i4").reshape(n, k)
    values = np.frombuffer(base64.b64decode(packed["values"]), dtype="<f4").reshape(n, k)
    return TeacherTokens(list(packed["token_ids"]), ids.tolist(), values.tolist())


# ------------------------------------------------------------------------------ the NLL meter


class MeterTopK:
    """``on_logits`` callback of :func:`~sdd_plugin.distill.stage.response_nll`: keeps the top-k of
    the rows in ``rows`` (the teacher's logits predicting each response token, then the next one)."""

    def __init__(self, k: int, rows: Collection[int]) -> None:
        self.k = k
        self.rows = set(rows)
        self.teacher: dict[int, TeacherTokens] = {}

    def __call__(self, row: int, logits, response_ids: list[int]) -> None:
        import torch

        if row not in self.rows:
            return
        top = torch.log_softmax(logits.float(), dim=-1).topk(self.k, dim=-1)
        ids, values = top.indices.tolist(), top.values.tolist()
        n = len(response_ids)
        self.teacher[row] = TeacherTokens(list(response_ids), ids[:n], values[:n], (ids[n], values[n]))


# ------------------------------------------------------------------------------- alignment


@dataclass
class KDTargets:
    """One row's KD fields and how many positions came from the teacher."""

    logprobs: list[list[float]]
    token_ids: list[list[int]]
    teacher_positions: int
    hard_positions: int


def _chat_ids(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def require_chat_template(tokenizer, what: str = "the teacher's tokenizer") -> None:
    """KD rows are chat rows: raise a ValueError when ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"logit distillation needs {what} to have a chat template (axolotl's KD dataset type "
            f"{AXOLOTL_KD_TYPE} is chat-template based)"
        )


def _hard(token: int, k: int) -> tuple[list[int], list[float]]:
    fillers = [t for t in range(k + 1) if t != token][: k - 1]
    return [token, *fillers], [0.0] + [HARD_LOGPROB] * (k - 1)


def kd_targets(tokenizer, messages: list[dict[str, str]], teacher: TeacherTokens | None, k: int) -> KDTargets:
    """The KD fields of a chat row whose last message is the (distilled) response.

    The entries cover the row's tokens from the last prompt token to the end (end-aligned, one per
    position): entry ``q`` is the distribution of the ``q``-th token after the prompt, the last one
    the distribution after the final token. ``teacher``'s tokens are matched to the row's tokens
    (matching runs of at least two tokens, or a run at the start), so a rewrite that was stripped,
    given an answer line, or re-tokenized a little differently keeps its distributions where the
    tokens agree; every other position gets a one-hot target on its true token.
    """
    prompt = _chat_ids(tokenizer, messages[:-1], True)
    full = _chat_ids(tokenizer, messages, False)
    start = len(prompt)
    if full[:start] != prompt:  # the template renders the prompt differently inside the full chat
        start = next((j for j, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
    if start < 1:
        raise ValueError("kd_targets: the chat template renders no prompt tokens before the response")
    span = full[start:]
    entries: list[tuple[list[int], list[float]] | None] = [None] * (len(span) + 1)
    if teacher is not None and teacher.token_ids:
        matcher = SequenceMatcher(None, teacher.token_ids, span, autojunk=False)
        last = len(teacher.token_ids) - 1
        for i, j, size in matcher.get_matching_blocks():
            if size == 0 or (size < 2 and (i, j) != (0, 0)):
                continue
            for t in range(size):
                entries[j + t] = (teacher.top_ids[i + t][:k], teacher.top_logprobs[i + t][:k])
            if i + size - 1 == last and teacher.after is not None:
                entries[j + size] = (teacher.after[0][:k], teacher.after[1][:k])
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else span[-1]
    ids_out, lps_out, from_teacher = [], [], 0
    for q, entry in enumerate(entries):
        if entry is not None and len(entry[0]) == k:
            from_teacher += 1
            ids, lps = entry
        else:  # a hard target: the true next token (after the last token: EOS)
            ids, lps = _hard(span[q] if q < len(span) else eos, k)
        ids_out.append([int(t) for t in ids])
        lps_out.append([round(float(v), DECIMALS) for v in lps])
    return KDTargets(lps_out, ids_out, from_teacher, len(entries) - from_teacher)


def teacher_of_record(record: dict[str, Any]) -> TeacherTokens:
    """The generation top-k kept in a row-cache record (:func:`pack_logprobs`)."""
    if "logprobs" not in record:
        raise RuntimeError("a cached rewrite has no top-k log-probs (the cache was written without KD)")
    return unpack_logprobs(record["logprobs"])


def write_kd_set(
    path: str | os.PathLike,
    tokenizer,
    conversations: Iterable[tuple[list[dict[str, str]], TeacherTokens | None]],
    k: int,
) -> dict[str, Any]:
    """Write the KD-ready set to the jsonl ``path`` (atomically, streamed): per conversation (chat
    messages ending in the response, and the teacher's tokens for it) a row ``{"messages",
    "logprobs", "target_token_ids"}``. Returns its report: rows, bytes (per row), and how many
    positions got the teacher's distribution vs a one-hot target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"  # open() gives it the umask's mode
    rows = teacher_positions = hard_positions = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for messages, teacher in conversations:
                t = kd_targets(tokenizer, messages, teacher, k)
                row = {"messages": messages, LOGPROBS_FIELD: t.logprobs, TOKEN_IDS_FIELD: t.token_ids}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows += 1
                teacher_positions += t.teacher_positions
                hard_positions += t.hard_positions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    size = path.stat().st_size
    positions = teacher_positions + hard_positions
    return {
        "path": str(path),
        "top_k": k,
        "axolotl_type": AXOLOTL_KD_TYPE,
        "rows": rows,
        "bytes": size,
        "bytes_per_row": round(size / rows, 1) if rows else None,
        "teacher_positions": teacher_positions,
        "hard_positions": hard_positions,
        "teacher_position_share": round(teacher_positions / positions, 4) if positions else None,
    }

"""Recovery measured as divergence from the unpruned model, per document, and its held-out texts.

:func:`kl_per_document` scores each document's tokens with the full-vocabulary
``KL(reference || model)`` at every scored position (and the NLLs from the same pass);
:func:`kl_recovery` and :func:`paired_recovery_gap` turn those into ``1 - KL(model) / KL(pruned)``
and a paired bootstrap of the difference between two fine-tuned models. The builders make the
held-out documents: the reference's own greedy answers (:func:`reference_answers`), WikiText-2
passages (:func:`wikitext_documents`) and GSM8K test solutions (:func:`gsm8k_documents`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .local_data import data_file

__all__ = [
    "DocScore",
    "as_causal_lm",
    "Document",
    "bits_per_byte",
    "gsm8k_documents",
    "kl_per_document",
    "kl_recovery",
    "log_probs_from_hidden",
    "mean_kl",
    "nll_per_document",
    "paired_recovery_gap",
    "reference_answers",
    "tokenizer_of",
    "wikitext_documents",
]

#: scored positions whose full-vocabulary log-probabilities are materialised at once
POSITIONS_PER_CHUNK = 256


@dataclass(frozen=True)
class Document:
    """A text and where its scored part starts.

    ``score_from`` is a character offset: tokens ending after it are scored (a token that
    straddles it too; the first token of the text never is, it has no prediction).
    ``score_from_token``, when given, is a token index that takes precedence."""

    text: str
    score_from: int = 0
    score_from_token: int | None = None

    @classmethod
    def from_parts(cls, prompt: str, answer: str) -> Document:
        """``prompt + answer`` with only the answer scored."""
        return cls(prompt + answer, score_from=len(prompt))


class DocScore(NamedTuple):
    """Per-document sums over the scored tokens (nats)."""

    kl: float
    """sum of KL(reference || model) over the scored positions"""
    tokens: int
    nll: float
    """the model's negative log-likelihood of the scored tokens"""
    ref_nll: float
    """the reference's negative log-likelihood of the same tokens"""
    bytes: int
    """UTF-8 bytes of the scored text span"""


# ------------------------------------------------------------------------------------ scoring


def _as_document(doc: str | Document) -> Document:
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, str):
        return Document(doc)
    raise TypeError(f"documents must be str or Document, got {type(doc).__name__}")


def as_causal_lm(spec: Any, dtype: str = "float32"):
    """A loaded model as is; a path / name / LoRA adapter folder loaded (adapters merged)."""
    if isinstance(spec, (str, os.PathLike)):
        from ..models import resolve_dtype
        from ..specdec import load_causal_lm

        return load_causal_lm(spec, resolve_dtype(dtype))
    return spec


def tokenizer_of(spec: Any, tokenizer=None):
    """``tokenizer`` when given, else the tokenizer of the model path ``spec`` (an adapter's own
    when it ships one, else its base's)."""
    if tokenizer is not None:
        return tokenizer
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError("tokenizer: pass one when the model is already loaded")
    from ..merge import resolve_input
    from ..models import load_tokenizer

    inp = resolve_input(spec)
    if inp.kind == "lora" and (inp.path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(inp.path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    return load_tokenizer(inp.weights_folder)


@dataclass
class _Encoded:
    ids: list[int]
    start: int  # first scored token index (>= 1); == len(ids) when nothing is scored
    bytes: int


def _encode(tokenizer, docs: Sequence[Document], max_length: int) -> list[_Encoded]:
    """Token ids (special tokens as the tokenizer adds them, unless the text starts with BOS),
    cut to ``max_length``, and the scored span."""
    out = []
    bos = tokenizer.bos_token
    for i, doc in enumerate(docs):
        add = not (bos and doc.text.startswith(bos))
        enc = tokenizer(doc.text, add_special_tokens=add, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"])[:max_length], list(enc["offset_mapping"])[:max_length]
        if doc.score_from_token is not None:
            start = doc.score_from_token
        else:
            start = next((t for t, (a, b) in enumerate(offsets) if b > doc.score_from and b > a), len(ids))
        if start < 0:
            raise ValueError(f"document {i}: score_from_token must be >= 0, got {start}")
        start = min(max(start, 1), len(ids))
        n_bytes = 0
        if start < len(ids):
            span = doc.text[offsets[start][0] : offsets[-1][1]]
            n_bytes = len(span.encode("utf-8"))
        out.append(_Encoded(ids, start, n_bytes))
    return out


def log_probs_from_hidden(model, hidden):
    """Full-vocabulary log-probabilities (float32) from final hidden states."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


def _hidden_at(model, ids, mask, rows, cols):
    """Final hidden states (after the decoder's last norm) at positions ``(rows[k], cols[k])``."""
    dev = model.get_output_embeddings().weight.device
    out = model.get_decoder()(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
    return out.last_hidden_state[rows.to(dev), cols.to(dev)]


def _score(
    reference,
    models: Mapping[str, Any],
    docs: Sequence[str | Document],
    tokenizer,
    batch_size: int,
    max_length: int,
    show_progress: bool,
    desc: str,
) -> dict[str, list[DocScore]]:
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    encoded = _encode(tokenizer, [_as_document(d) for d in docs], max_length)
    vocab = {name: m.get_output_embeddings().weight.shape[0] for name, m in models.items()}
    if reference is not None:
        ref_vocab = reference.get_output_embeddings().weight.shape[0]
        bad = {k: v for k, v in vocab.items() if v != ref_vocab}
        if bad:
            raise ValueError(f"vocabulary sizes differ from the reference's {ref_vocab}: {bad}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = {name: [[0.0, 0, 0.0, 0.0, e.bytes] for e in encoded] for name in models}
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    bar = tqdm(total=len(order), desc=desc, unit="doc", disable=not show_progress, dynamic_ncols=True)
    with torch.inference_mode():
        for b0 in range(0, len(order), batch_size):
            batch = [i for i in order[b0 : b0 + batch_size] if encoded[i].start < len(encoded[i].ids)]
            bar.update(min(batch_size, len(order) - b0))
            if not batch:
                continue
            width = max(len(encoded[i].ids) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols, targets = [], [], []
            for r, i in enumerate(batch):
                e = encoded[i]
                ids[r, : len(e.ids)] = torch.tensor(e.ids)
                mask[r, : len(e.ids)] = 1
                n = len(e.ids) - e.start
                rows += [r] * n
                cols += range(e.start - 1, len(e.ids) - 1)  # position t predicts token t + 1
                targets += e.ids[e.start :]
            rows_t, cols_t, targets_t = torch.tensor(rows), torch.tensor(cols), torch.tensor(targets)

            at = (ids, mask, rows_t, cols_t)
            h_ref = _hidden_at(reference, *at) if reference is not None else None
            h_models = {name: _hidden_at(m, *at) for name, m in models.items()}
            acc = {name: torch.zeros((4, len(batch)), dtype=torch.float64) for name in models}
            for c0 in range(0, len(rows), POSITIONS_PER_CHUNK):
                sl = slice(c0, c0 + POSITIONS_PER_CHUNK)
                tgt, rr = targets_t[sl], rows_t[sl]
                lp_ref = None
                if reference is not None:
                    lp_ref = log_probs_from_hidden(reference, h_ref[sl]).cpu()
                    p_ref = lp_ref.exp()
                    ref_nll = -lp_ref.gather(1, tgt[:, None])[:, 0]
                for name, m in models.items():
                    lp = log_probs_from_hidden(m, h_models[name][sl]).cpu()
                    a = acc[name]
                    a[1].index_add_(0, rr, torch.ones(len(rr), dtype=torch.float64))
                    a[2].index_add_(0, rr, -lp.gather(1, tgt[:, None])[:, 0].double())
                    if lp_ref is not None:
                        kl = (p_ref * (lp_ref - lp)).sum(-1)
                        a[0].index_add_(0, rr, kl.double())
                        a[3].index_add_(0, rr, ref_nll.double())
            for name in models:
                for r, i in enumerate(batch):
                    s = sums[name][i]
                    s[0], s[1], s[2], s[3] = (float(v) for v in acc[name][:, r])
                    s[1] = int(s[1])
    bar.close()
    return {name: [DocScore(*s) for s in per_doc] for name, per_doc in sums.items()}


def kl_per_document(
    reference_model: Any,
    model: Any,
    texts: Sequence[str | Document],
    tokenizer=None,
    batch_size: int = 8,
    dtype: str = "float32",
    max_length: int = 1024,
    show_progress: bool = False,
) -> list[DocScore] | dict[str, list[DocScore]]:
    """Per document: summed ``KL(reference || model)`` over the full vocabulary at each scored
    position, the scored token count, both models' NLL of those tokens and their bytes.

    Models are loaded HF causal LMs or paths / embedded names / LoRA adapter folders (loaded in
    ``dtype``, adapters merged on their base). ``model`` may also be a ``{name: model}`` mapping:
    every model is then scored against one reference pass per batch, and a ``{name: scores}`` dict
    is returned. ``texts`` are strings (all tokens but the first scored) or :class:`Document` s.
    Documents are cut to their first ``max_length`` tokens. ``tokenizer`` defaults to the
    reference's (the models must share its vocabulary)."""
    tokenizer = tokenizer_of(reference_model, tokenizer)
    reference = as_causal_lm(reference_model, dtype)
    many = isinstance(model, Mapping)
    models = {str(k): as_causal_lm(v, dtype) for k, v in (model.items() if many else [("model", model)])}
    scores = _score(reference, models, texts, tokenizer, batch_size, max_length, show_progress, "kl")
    return scores if many else scores["model"]


def nll_per_document(
    model: Any,
    texts: Sequence[str | Document],
    tokenizer=None,
    batch_size: int = 8,
    dtype: str = "float32",
    max_length: int = 1024,
    show_progress: bool = False,
) -> list[DocScore]:
    """The model's NLL of each document's scored tokens, without a reference (``kl`` and
    ``ref_nll`` are 0). Same documents, cutting and batching as :func:`kl_per_document`."""
    tokenizer = tokenizer_of(model, tokenizer)
    loaded = {"model": as_causal_lm(model, dtype)}
    return _score(None, loaded, texts, tokenizer, batch_size, max_length, show_progress, "nll")["model"]


# --------------------------------------------------------------------------------- statistics


def _arrays(docs: Sequence[Sequence[float]]):
    import numpy as np

    arr = np.asarray([(float(d[0]), float(d[1])) for d in docs], dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def mean_kl(docs: Sequence[Sequence[float]]) -> float:
    """Token-weighted mean KL per token of ``(sum_kl, n_tokens, ...)`` documents."""
    kl, n = _arrays(docs)
    if n.sum() <= 0:
        raise ValueError("no scored tokens")
    return float(kl.sum() / n.sum())


def kl_recovery(kl_model_docs: Sequence[Sequence[float]], kl_pruned_docs: Sequence[Sequence[float]]) -> float:
    """``1 - KL(model) / KL(pruned)``: token-weighted mean KLs to the reference (1 = the
    reference's distribution regained, 0 = no better than the pruned model)."""
    pruned = mean_kl(kl_pruned_docs)
    if pruned <= 0:
        raise ValueError("the pruned model's KL is 0: recovery is undefined")
    return 1.0 - mean_kl(kl_model_docs) / pruned


def paired_recovery_gap(
    kl_a_docs: Sequence[Sequence[float]],
    kl_b_docs: Sequence[Sequence[float]],
    kl_pruned_docs: Sequence[Sequence[float]],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``recovery(a) - recovery(b)`` in points with a paired bootstrap 95 % interval: each
    replicate resamples document indices once and applies them to a, b and the pruned model."""
    import numpy as np

    ka, na = _arrays(kl_a_docs)
    kb, nb = _arrays(kl_b_docs)
    kp, np_ = _arrays(kl_pruned_docs)
    if not (len(ka) == len(kb) == len(kp)) or len(ka) == 0:
        raise ValueError(f"need the same non-zero number of documents, got {len(ka)}, {len(kb)}, {len(kp)}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    idx = np.random.default_rng(seed).integers(0, len(ka), size=(n_boot, len(ka)))

    def rec(k, n, sel=None):
        if sel is None:
            return 1 - (k.sum() / n.sum()) / (kp.sum() / np_.sum())
        return 1 - (k[sel].sum(1) / n[sel].sum(1)) / (kp[sel].sum(1) / np_[sel].sum(1))

    with np.errstate(divide="ignore", invalid="ignore"):
        dist = 100 * (rec(ka, na, idx) - rec(kb, nb, idx))
        lo, hi = np.nanpercentile(dist, [2.5, 97.5])
    ra, rb = float(rec(ka, na)), float(rec(kb, nb))
    return {
        "gap": 100 * (ra - rb),
        "ci95": [float(lo), float(hi)],
        "recovery_a": ra,
        "recovery_b": rb,
        "documents": len(ka),
        "n_boot": n_boot,
    }


def bits_per_byte(docs: Sequence[DocScore], reference: bool = False) -> float:
    """Summed NLL over summed bytes, in bits (``reference``: the reference's NLL)."""
    nll = sum(d.ref_nll if reference else d.nll for d in docs)
    n_bytes = sum(d.bytes for d in docs)
    if n_bytes <= 0:
        raise ValueError("no scored bytes")
    return nll / n_bytes / math.log(2)


# ---------------------------------------------------------------------------- held-out texts


def reference_answers(
    reference_model: str | os.PathLike,
    instructions: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    dtype: str = "float32",
    show_progress: bool = False,
) -> list[Document]:
    """The reference model's own greedy answers to ``instructions`` (one user turn through its chat
    template), generated with the ``hf`` backend; each a ``prompt + answer`` document scoring the
    answer only. Answers cut at ``max_new_tokens`` are kept."""
    from ..distill.stage import render_prompt
    from ..interfaces import GenerationResult, GenerationSettings
    from ..models import load_tokenizer, resolve_model
    from ..plugins import get_backend

    if not all(isinstance(s, str) and s.strip() for s in instructions):
        bad = next(i for i, s in enumerate(instructions) if not (isinstance(s, str) and s.strip()))
        raise ValueError(f"instruction {bad} is empty or not a string")
    path = resolve_model(reference_model)
    tok = load_tokenizer(path)
    prompts = [render_prompt(tok, [{"role": "user", "content": s}]) for s in instructions]
    answers: list[str | None] = [None] * len(prompts)

    def keep(res: GenerationResult) -> None:
        answers[res.index] = res.text

    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, batch_size=batch_size, extra={"dtype": dtype}
    )
    get_backend("hf").generate(
        str(path), prompts, settings, keep, show_progress=show_progress, desc="reference answers"
    )
    return [Document.from_parts(p, a or "") for p, a in zip(prompts, answers)]


def wikitext_documents(
    tokenizer,
    path: str | os.PathLike | None = None,
    tokens_per_passage: int = 256,
    max_passages: int | None = None,
) -> list[Document]:
    """WikiText-2 test articles, each cut to its first ``tokens_per_passage`` tokens (at a token
    boundary, so the text is an exact prefix). ``path``: ``wiki.test.raw`` or the data root."""
    from .local_data import wikitext_pages

    if tokens_per_passage < 2:
        raise ValueError(f"tokens_per_passage must be >= 2, got {tokens_per_passage}")
    pages = wikitext_pages(data_file(path, "wikitext2/wiki.test.raw"))
    if max_passages is not None:
        pages = pages[:max_passages]
    docs = []
    for page in pages:
        offsets = tokenizer(page, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        end = offsets[tokens_per_passage - 1][1] if len(offsets) > tokens_per_passage else len(page)
        docs.append(Document(page[:end]))
    return docs


def gsm8k_documents(
    path: str | os.PathLike | None = None,
    limit: int | None = None,
    tokenizer=None,
) -> list[Document]:
    """GSM8K test rows as ``prompt + reference solution`` documents scoring the solution only.
    With ``tokenizer`` the question goes through its chat template (as fine-tuning renders it),
    else ``"Question: ...\\nAnswer:"`` and a space before the solution. ``path``: ``test.jsonl``
    or the data root."""
    from ..distill.stage import render_prompt

    file = data_file(path, "gsm8k/test.jsonl")
    docs = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(docs) >= limit:
                break
            try:
                row = json.loads(line)
                question, answer = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{file}:{n}: expected a JSON object with question and answer ({exc})"
                ) from exc
            if tokenizer is not None:
                prompt = render_prompt(tokenizer, [{"role": "user", "content": question}])
            else:
                prompt, answer = f"Question: {question}\nAnswer:", " " + answer
            docs.append(Document.from_parts(prompt, answer))
    return docs

"""Data of the forgetting-curve study: its fine-tuning sets, held-out documents, sequence cap and
the training order axolotl actually used.

- :data:`TRAIN_SETS` -- the selectable fine-tuning sets (file under the data root, format, template);
- :func:`heldout_instructions` -- Dolly instructions never used for training (from the file's end);
- :func:`wikitext_passages` -- consecutive WikiText-2 test passages, evenly spaced over the file,
  without the lines the pruning calibration read;
- :func:`gsm8k_test_documents` -- GSM8K test solutions (calculator annotations stripped, as in
  training) scored after their chat prompt;
- :func:`sequence_cap` -- the shortest ``sequence_len`` that keeps a share of the rows whole;
- :func:`prepared_order` -- which source rows axolotl's prepared (tokenised, shuffled) dataset holds,
  in its order, and how many it cut at the cap.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate.divergence import Document
from .presets import TrainSet

#: name -> (file under the data root, sdd format, distillation template)
TRAIN_SETS: dict[str, tuple[str, str, str]] = {
    "gsm8k": ("gsm8k/train.jsonl", "gsm8k", "math"),
    "dolly": ("dolly/databricks-dolly-15k.citations-stripped.jsonl.gz", "dolly", "general"),
    "alpaca": ("alpaca/alpaca_5000.json", "alpaca", "general"),
}
DOLLY = TRAIN_SETS["dolly"][0]
WIKITEXT = "wikitext2/wiki.test.raw"
GSM8K_TEST = "gsm8k/test.jsonl"
_CALC_RE = re.compile(r"<<[^<>]*>>")


def train_set(name: str, rows: int) -> TrainSet:
    """The :class:`TrainSet` of a selectable set (ValueError naming the known ones)."""
    if name not in TRAIN_SETS:
        raise ValueError(f"train_set: unknown set {name!r}; known: {', '.join(TRAIN_SETS)}")
    source, fmt, template = TRAIN_SETS[name]
    return TrainSet(name=name, source=source, format=fmt, template=template, rows=rows)


# ------------------------------------------------------------------------------ held-out texts


def heldout_instructions(
    root: Path, count: int, train: TrainSet, max_chars: int = 1500
) -> tuple[list[str], list[int]]:
    """``count`` Dolly instructions (context included) from the end of the file, skipping prompts
    longer than ``max_chars``; returns ``(instructions, row indices)``. When the study trains on
    Dolly (its first ``train.rows`` rows) the held-out rows must not reach into them."""
    from ..distill.formats import load_rows, read_examples

    rows = load_rows(root / DOLLY, "dolly")
    examples = read_examples(rows, "dolly", DOLLY)
    picked: list[int] = []
    for i in range(len(examples) - 1, -1, -1):
        if len(picked) == count:
            break
        if len(examples[i].instruction) <= max_chars:
            picked.append(i)
    if len(picked) < count:
        raise ValueError(f"{DOLLY}: only {len(picked)} instructions of <= {max_chars} characters")
    picked.sort()
    if train.source == DOLLY and picked[0] < train.rows:
        raise ValueError(
            f"held-out Dolly rows start at row {picked[0]}, inside the {train.rows} training rows: "
            "lower rows or instruct_docs"
        )
    return [examples[i].instruction for i in picked], picked


def wikitext_passages(
    tokenizer, root: Path, count: int, tokens: int, skip_texts: Sequence[str] = ()
) -> list[Document]:
    """``count`` passages of ``tokens`` tokens: every article of WikiText-2 test cut into
    consecutive passages (at token boundaries), then ``count`` of them evenly spaced over the file.
    Passages holding any of ``skip_texts`` (e.g. the pruning calibration lines) are left out."""
    from ..evaluate.local_data import wikitext_pages

    if count < 1 or tokens < 2:
        raise ValueError(f"wikitext passages: need count >= 1 and tokens >= 2, got {count}, {tokens}")
    probes = [t.strip()[:60] for t in skip_texts if t.strip()]
    passages: list[str] = []
    for page in wikitext_pages(root / WIKITEXT):
        offsets = tokenizer(page, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for start in range(0, len(offsets) - tokens + 1, tokens):
            text = page[offsets[start][0] : offsets[start + tokens - 1][1]]
            if not any(p in text for p in probes):
                passages.append(text)
    if len(passages) < count:
        raise ValueError(f"{WIKITEXT}: only {len(passages)} passages of {tokens} tokens, asked for {count}")
    step = len(passages) / count
    return [Document(passages[int(k * step)]) for k in range(count)]


def gsm8k_test_documents(tokenizer, root: Path, count: int) -> list[Document]:
    """The first ``count`` GSM8K test rows as ``chat prompt + solution`` (solution scored), with the
    ``<<calc>>`` annotations stripped like the training rows'."""
    from ..evaluate.divergence import gsm8k_documents

    docs = gsm8k_documents(root, limit=count, tokenizer=tokenizer)
    out = []
    for d in docs:
        prompt, answer = d.text[: d.score_from], d.text[d.score_from :]
        out.append(Document.from_parts(prompt, _CALC_RE.sub("", answer)))
    return out


def documents_json(docs: Sequence[Document]) -> list[dict[str, Any]]:
    """Documents as JSON-able dicts (:func:`documents_from_json` reads them back)."""
    return [{"text": d.text, "score_from": d.score_from} for d in docs]


def documents_from_json(items: Sequence[dict[str, Any]]) -> list[Document]:
    """The inverse of :func:`documents_json`."""
    return [Document(it["text"], score_from=int(it["score_from"])) for it in items]


# ------------------------------------------------------------------------------ sequence cap


def chat_lengths(tokenizer, rows: Sequence[dict]) -> list[int]:
    """Token count of each chat row (``messages``) rendered through the tokenizer's template."""
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def sequence_cap(lengths: Sequence[int], coverage: float) -> int:
    """The shortest cap ``L`` such that at least ``coverage`` of the rows have ``length <= L``."""
    if not lengths:
        raise ValueError("sequence cap: no rows")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    ordered = sorted(lengths)
    return int(ordered[max(0, math.ceil(coverage * len(ordered)) - 1)])


# ------------------------------------------------------------------------------ training order


def _prepared_dataset(prepared: Path):
    import datasets

    found = sorted({p.parent for p in Path(prepared).rglob("dataset_info.json")})
    if len(found) != 1:
        raise FileNotFoundError(f"{prepared}: expected one prepared dataset, found {len(found)}")
    return datasets.load_from_disk(str(found[0]))


def prepared_order(
    prepared: str | os.PathLike, tokenizer, instructions: Sequence[str], sequence_len: int
) -> dict[str, Any]:
    """Source row ids of axolotl's prepared dataset in its order (matched by their instruction in
    the unlabelled prompt tokens), and how many rows reach the cap (cut by ``truncate``)."""
    ds = _prepared_dataset(Path(prepared))
    probes = [s.strip()[:80] for s in instructions]
    order: list[int | None] = []
    at_cap = 0
    for row in ds:
        ids, labels = row["input_ids"], row["labels"]
        at_cap += len(ids) >= sequence_len
        n_prompt = next((k for k, v in enumerate(labels) if v != -100), len(labels))
        prompt = tokenizer.decode(ids[:n_prompt], skip_special_tokens=False)
        order.append(next((i for i, p in enumerate(probes) if p and p in prompt), None))
    return {"rows": len(ds), "order": order, "at_cap": int(at_cap)}

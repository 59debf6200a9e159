"""Helpers referenced by the sdd_* lm-eval task YAMLs (``!function sdd_task_utils.<name>``).

Copied next to the rendered YAMLs at run time; the bodies mirror lm-eval's stock truthfulqa and
winogrande helpers so the sdd_* tasks score exactly like the stock ones. The perplexity tasks use
lm-eval's own wikitext helpers (detokenizer, word/byte counts on the raw ``page``).
"""

from __future__ import annotations

import numpy as np
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as _wikitext_process_results
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: F401 (YAML)


def page(doc: dict) -> str:
    """The document text scored by the rolling log-likelihood (no detokenization)."""
    return doc["page"]


def process_results_ppl(doc: dict, results: list) -> dict:
    """(log-likelihood, #words / #bytes of the raw page) pairs, as lm-eval's stock wikitext task."""
    return _wikitext_process_results(doc, results)


def process_results_mc2(doc: dict, results: list) -> dict:
    """TruthfulQA mc2: normalised probability mass on the true answers (lm-eval's formula)."""
    ll, _ = zip(*results)
    probs = np.exp(np.array(ll))
    probs_norm = probs / np.sum(probs)
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(np.sum(probs_norm[labels == 1]))}


def winogrande_doc_to_text(doc: dict) -> int:
    """Index of the correct option (partial scoring: the context varies, the target is shared)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    """The sentence after the blank."""
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    """The sentence up to the blank, filled with each option."""
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]

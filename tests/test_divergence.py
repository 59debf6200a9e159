"""KL-to-reference per document, recovery statistics and the held-out document builders."""

from __future__ import annotations

import math

import pytest
import torch

from sdd_plugin.evaluate.divergence import (
    DocScore,
    Document,
    bits_per_byte,
    gsm8k_documents,
    kl_per_document,
    kl_recovery,
    nll_per_document,
    paired_recovery_gap,
    reference_answers,
    tokenizer_of,
    wikitext_documents,
)
from sdd_plugin.models import load_model

DOCS = [
    "The quick brown fox jumps over the lazy dog, twice.",
    Document.from_parts("Question: what is six times seven?\nAnswer:", " It is forty-two."),
    Document("A document scored from its fourth token on.", score_from_token=3),
    "Short",
    "Ünïcödé text — with dashes and 12,000 numbers.",
]


def _direct(ref, model, tok, doc: Document):
    """Unbatched KL / NLLs from plain full-sequence forwards of both models."""
    enc = tok(doc.text, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    if doc.score_from_token is not None:
        start = doc.score_from_token
    else:
        start = next(t for t, (a, b) in enumerate(enc["offset_mapping"]) if b > doc.score_from and b > a)
    start = max(start, 1)
    with torch.no_grad():
        lr = torch.log_softmax(ref(ids).logits.float(), -1)[0, start - 1 : -1]
        lm = torch.log_softmax(model(ids).logits.float(), -1)[0, start - 1 : -1]
    target = ids[0, start:, None]
    kl = (lr.exp() * (lr - lm)).sum(-1).sum().item()
    return kl, ids.shape[1] - start, -lm.gather(1, target).sum().item(), -lr.gather(1, target).sum().item()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batched_kl_equals_plain_forwards(tiny_models, arch):
    ref, tok = load_model(tiny_models(arch, 4))
    model, _ = load_model(tiny_models(arch, 2))
    scores = kl_per_document(ref, model, DOCS, tokenizer=tok, batch_size=2)
    assert len(scores) == len(DOCS)
    for doc, got in zip(DOCS, scores):
        doc = doc if isinstance(doc, Document) else Document(doc)
        kl, n, nll, ref_nll = _direct(ref, model, tok, doc)
        assert got.tokens == n
        assert got.kl == pytest.approx(kl, rel=1e-4, abs=1e-5)
        assert got.nll == pytest.approx(nll, rel=1e-5) and got.ref_nll == pytest.approx(ref_nll, rel=1e-5)
        assert got.kl > 0 or n == 0
    # only the answer of the prompt + answer document is scored, and its bytes are the answer's
    answer = DOCS[1].text[DOCS[1].score_from :]
    assert scores[1].bytes == len(answer.encode("utf-8"))
    assert scores[0].bytes == len(DOCS[0].encode("utf-8")) - len("The")  # all but the first token


def test_self_kl_is_zero_and_mapping_matches_single_calls(tiny_models):
    ref, tok = load_model(tiny_models("llama", 4))
    other, _ = load_model(tiny_models("llama", 2))
    both = kl_per_document(ref, {"same": ref, "other": other}, DOCS, tokenizer=tok, batch_size=3)
    assert all(abs(s.kl) < 1e-5 and s.nll == pytest.approx(s.ref_nll) for s in both["same"])
    single = kl_per_document(ref, other, DOCS, tokenizer=tok, batch_size=1)
    for a, b in zip(both["other"], single):
        assert a.tokens == b.tokens and a.kl == pytest.approx(b.kl, rel=1e-4)
    nll = nll_per_document(other, DOCS, tokenizer=tok)
    assert [round(s.nll, 3) for s in nll] == [round(s.nll, 3) for s in single]
    assert all(s.kl == 0 and s.ref_nll == 0 for s in nll)


def test_adapter_folder_is_loaded_on_its_base(tmp_path, tiny_models):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_path = tiny_models("llama", 2)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_path)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    merged = lora.merge_and_unload().eval()
    ref, tok = load_model(base_path)
    want = kl_per_document(ref, merged, DOCS[:2], tokenizer=tok)
    got = kl_per_document(str(base_path), str(tmp_path / "adapter"), DOCS[:2])
    assert tokenizer_of(str(tmp_path / "adapter")).vocab_size == tok.vocab_size
    assert all(w.kl > 1e-6 for w in want)
    assert [g.kl for g in got] == pytest.approx([w.kl for w in want], rel=1e-4)


def test_recovery_and_paired_gap():
    pruned = [(4.0, 10), (2.0, 10), (6.0, 20)]
    better = [(1.0, 10), (0.5, 10), (1.5, 20)]  # a quarter of the pruned KL everywhere
    worse = [(2.0, 10), (1.0, 10), (3.0, 20)]  # half of it
    assert kl_recovery(pruned, pruned) == 0
    assert kl_recovery(better, pruned) == pytest.approx(0.75)
    assert kl_recovery([DocScore(0.0, 10, 1.0, 1.0, 5)] * 3, pruned) == 1
    g = paired_recovery_gap(better, worse, pruned, n_boot=500)
    # the ratio is the same in every document, so every resample gives 25 points
    assert g["gap"] == pytest.approx(25) and g["ci95"] == pytest.approx([25, 25])
    assert g["recovery_a"] == pytest.approx(0.75) and g["documents"] == 3
    assert paired_recovery_gap(worse, better, pruned, n_boot=500)["gap"] == pytest.approx(-25)
    noisy = [(1.0, 10), (2.5, 10), (2.5, 20)]
    g = paired_recovery_gap(noisy, worse, pruned, n_boot=2000, seed=1)
    assert g["ci95"][0] < g["gap"] < g["ci95"][1]
    with pytest.raises(ValueError, match="same"):
        paired_recovery_gap(better, worse[:2], pruned)
    with pytest.raises(ValueError, match="undefined"):
        kl_recovery(better, [(0.0, 10)])


def test_wikitext_and_gsm8k_documents(shared_data, default_model):
    from sdd_plugin.models import load_tokenizer

    tok = load_tokenizer(default_model)
    pages = wikitext_documents(tok, shared_data, tokens_per_passage=64, max_passages=5)
    assert len(pages) == 5 and pages[0].text.startswith(" = Robert Boulter = ")
    for doc in pages:
        assert 2 <= len(tok(doc.text, add_special_tokens=False)["input_ids"]) <= 64
    plain = gsm8k_documents(shared_data, limit=3)
    assert plain[0].text[: plain[0].score_from].startswith("Question: Janet")
    assert plain[0].text[plain[0].score_from :].rstrip().endswith("#### 18")
    chat = gsm8k_documents(shared_data / "gsm8k" / "test.jsonl", limit=2, tokenizer=tok)
    assert chat[0].text[: chat[0].score_from].endswith("<|im_start|>assistant\n")
    scores = nll_per_document(default_model, plain, tokenizer=tok)
    for doc, s in zip(plain, scores):
        assert s.bytes == len(doc.text[doc.score_from :].encode("utf-8"))
    bpb = bits_per_byte(scores)
    assert bpb == pytest.approx(sum(s.nll for s in scores) / sum(s.bytes for s in scores) / math.log(2))
    assert 0.1 < bpb < 3  # a trained model on English worked solutions
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        gsm8k_documents(shared_data / "nope")


def test_reference_answers_are_the_models_greedy_answers(default_model):
    docs = reference_answers(default_model, ["What is 2 + 3?", "Name a colour."], max_new_tokens=12)
    assert len(docs) == 2
    for doc in docs:
        prompt, answer = doc.text[: doc.score_from], doc.text[doc.score_from :]
        assert prompt.endswith("<|im_start|>assistant\n") and answer.strip()
    with pytest.raises(ValueError, match="instruction 1"):
        reference_answers(default_model, ["ok", " "])

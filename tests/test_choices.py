"""Multiple-choice scoring with a shared context pass: exactness, lm-eval parity, the paired gap."""

from __future__ import annotations

import pytest
import torch

from sdd_plugin.evaluate.choices import (
    ChoiceItem,
    arc_easy_items,
    choice_loglikelihoods,
    evaluate_choices,
    hellaswag_items,
    paired_accuracy_gap,
    score_choices,
)
from sdd_plugin.models import load_model

CRAFTED = [
    ChoiceItem("Hi", ("there", "you fool", "x"), 1),  # a one-token context: no shared pass for it
    ChoiceItem("Question: a context that ends with a space ", ("a", "bb"), 0),
]


def _plain(model, tok, context: str, continuation: str) -> float:
    """Log-likelihood from one full-sequence forward of context + continuation (lm-eval's split)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx) :]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids[:, :-1]).logits.float(), -1)[0, len(ctx) - 1 :]
    return lp.gather(1, torch.tensor(cont)[:, None]).sum().item()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_shared_context_equals_full_forward(tiny_models, shared_data, arch):
    model, tok = load_model(tiny_models(arch, 4))
    items = arc_easy_items(shared_data, limit=5) + hellaswag_items(shared_data, limit=3) + CRAFTED
    lls = choice_loglikelihoods(model, tok, items, batch_size=4)
    for item, got in zip(items, lls):
        want = [_plain(model, tok, item.context, " " + c) for c in item.choices]
        assert got == pytest.approx(want, abs=1e-4)


def test_item_readers(shared_data):
    arc = arc_easy_items(shared_data)
    assert len(arc) == 2376 and all(0 <= it.gold < len(it.choices) for it in arc)
    assert arc[0].context.startswith("Question: ") and arc[0].context.endswith("\nAnswer:")
    hs = hellaswag_items(shared_data, limit=2000)
    assert len(hs) == 2000 and all(len(it.choices) == 4 for it in hs)
    assert hs[0].context == "Roof shingle removal: A man is sitting on a roof. he" and hs[0].gold == 3
    assert hs[0].choices[3] == "starts pulling up roofing on a roof."


def test_metrics_follow_lm_eval_definitions(tiny_models, shared_data):
    model, tok = load_model(tiny_models("llama", 2))
    items = arc_easy_items(shared_data, limit=30)
    r = score_choices(model, items, tokenizer=tok, batch_size=8)
    assert r["items"] == 30 and len(r["correct"]) == 30
    for item, ll, acc, norm, nbytes in zip(
        items, r["loglikelihoods"], r["correct"], r["correct_norm"], r["correct_bytes"]
    ):
        chars = [x / len(c) for x, c in zip(ll, item.choices)]
        bytes_ = [x / len(c.encode()) for x, c in zip(ll, item.choices)]
        assert acc == (ll.index(max(ll)) == item.gold)
        assert norm == (chars.index(max(chars)) == item.gold)
        assert nbytes == (bytes_.index(max(bytes_)) == item.gold)
    assert r["acc"] == sum(r["correct"]) / 30 and r["acc_norm"] == sum(r["correct_norm"]) / 30


def test_bad_items_fail_before_weights_load():
    with pytest.raises(ValueError, match="item 0: gold index 3"):
        score_choices("/nonexistent/model", [ChoiceItem("Q", ("a", "b"), 3)])
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_choices("/nonexistent/model", "piqa")


def test_paired_accuracy_gap():
    a = [1, 1, 0, 1, 0, 1, 1, 1] * 25
    same = paired_accuracy_gap(a, a)
    assert same["gap"] == 0 and same["ci95"] == [0, 0]
    b = [x if i % 8 else 0 for i, x in enumerate(a)]  # b misses every 8th item that a gets right
    g = paired_accuracy_gap(a, b, n_boot=1000, seed=3)
    assert g["gap"] == pytest.approx(12.5) and 0 < g["ci95"][0] < 12.5 < g["ci95"][1]
    assert paired_accuracy_gap(b, a, n_boot=1000, seed=3)["gap"] == pytest.approx(-12.5)
    with pytest.raises(ValueError, match="equally long"):
        paired_accuracy_gap(a, a[:-1])


@pytest.mark.slow
def test_matches_lm_eval_on_real_arc_easy_items(default_model, shared_data):
    """The first 20 ARC-Easy test items through lm-eval (task sdd_arc_easy) and through
    :func:`evaluate_choices`: the same per-item acc and acc_norm, log-likelihoods within 1e-3."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sdd_plugin.evaluate.local_data import prepare_tasks

    folder = prepare_tasks(["sdd_arc_easy"], shared_data)
    lm = HFLM(pretrained=str(default_model), device="cpu", dtype="float32", batch_size=16)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["sdd_arc_easy"],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        limit=20,
        num_fewshot=0,
        log_samples=True,
    )
    samples = sorted(out["samples"]["sdd_arc_easy"], key=lambda s: s["doc_id"])
    ours = evaluate_choices(str(default_model), "arc_easy", shared_data, limit=20, batch_size=8)
    assert [s["acc"] for s in samples] == ours["correct"]
    assert [s["acc_norm"] for s in samples] == ours["correct_norm"]
    for s, lls in zip(samples, ours["loglikelihoods"]):
        assert [float(r[0][0]) for r in s["resps"]] == pytest.approx(lls, abs=1e-3)
    res = out["results"]["sdd_arc_easy"]
    assert res["acc,none"] == ours["acc"] and res["acc_norm,none"] == ours["acc_norm"]

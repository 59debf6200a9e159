"""The forgetting-curve study (`sdd bench drift`): presets, the arms' recipes, kept checkpoints,
held-out data, model cost, the summary statistics, and the quick preset end to end (slow)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from sdd_plugin.bench.drift import get_drift_preset, run_drift, stage_root
from sdd_plugin.bench.drift_data import (
    heldout_instructions,
    sequence_cap,
    train_set,
    wikitext_passages,
)
from sdd_plugin.bench.drift_report import summarise
from sdd_plugin.bench.drift_training import CheckpointKeeper, study_recipe


def test_default_preset_is_the_issue_study_and_bad_settings_are_named():
    p = get_drift_preset("default")
    assert p.rows >= 512 and p.max_steps >= 300 and p.epochs >= 2
    assert len(p.checkpoints) == 6 and all(b == 2 * a for a, b in zip(p.checkpoints, p.checkpoints[1:]))
    assert p.arms == ["pruned", "sft", "sdd"] and p.regime == "lora" and p.lr == 2e-4
    assert p.micro_batch_size * p.gradient_accumulation_steps == 8 and p.distill_retries == 3
    assert p.choice_items == {"arc_easy": None, "hellaswag": 2000}
    assert p.accuracy_steps[-1] == p.max_steps and p.accuracy_steps[0] in p.checkpoints[1:-1]
    assert get_drift_preset("default", regime="full").lr == 2e-5
    with pytest.raises(ValueError, match="checkpoints must be increasing"):
        get_drift_preset("quick", checkpoints=[20, 10])
    with pytest.raises(ValueError, match="unknown arm"):
        get_drift_preset("quick", arms=["pruned", "sft", "kd"])
    with pytest.raises(ValueError, match=r"choice_steps \[15\]"):
        get_drift_preset("quick", choice_steps=[15])
    with pytest.raises(ValueError, match="chekpoints"):
        get_drift_preset("quick", chekpoints=[10])
    with pytest.raises(ValueError, match="unknown drift preset 'huge'"):
        get_drift_preset("huge")


def test_trained_arms_differ_only_in_their_switch(tmp_path):
    from sdd_plugin.axolotl.args import parse_sdd_args

    p = get_drift_preset("default", distill_checker="math_strict", checkpoints=[12, 24, 36])
    ts = train_set("gsm8k", p.rows)
    args = (ts, tmp_path / "rows.jsonl", tmp_path / "stage", 288, "bfloat16", "/x/wiki.raw")
    sft, sdd = study_recipe(p, "sft", *args), study_recipe(p, "sdd", *args)
    assert {k for k in set(sft) | set(sdd) if sft.get(k) != sdd.get(k)} == {"sdd_distill"}
    assert parse_sdd_args(sdd).sdd_distill_checker == "math_strict"
    assert sdd["max_steps"] == 36 and sdd["save_steps"] == 12 and "save_total_limit" not in sdd
    assert sdd["sequence_len"] == 288 and sdd["excess_length_strategy"] == "truncate"
    assert sdd["bf16"] is True and sdd["sample_packing"] is False and sdd["adapter"] == "lora"
    full = study_recipe(get_drift_preset("default", regime="full"), "sdd", *args)
    assert "adapter" not in full and not any(k.startswith("lora_") for k in full)
    assert full["learning_rate"] == 2e-5 and full["output_dir"].endswith("model")
    with pytest.raises(ValueError, match="not trained"):
        study_recipe(p, "pruned", *args)


def _checkpoint(out, step, complete=True):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(b"x")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_checkpoint_keeper_keeps_the_measured_steps_and_the_newest(tmp_path):
    for step in (10, 20, 30):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 40, complete=False)  # being written
    keeper = CheckpointKeeper(tmp_path, keep={10, 40}, strip_optimizer=True)
    keeper.sweep()
    # 20: not measured, not the newest complete one -> gone; 30: newest complete (resume point)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-30", "checkpoint-40"]
    assert not (tmp_path / "checkpoint-10" / "optimizer.pt").exists()
    assert (tmp_path / "checkpoint-30" / "optimizer.pt").exists()
    (tmp_path / "checkpoint-40" / "trainer_state.json").write_text("{}")
    keeper.sweep(final=True)
    assert sorted(keeper.complete()) == [10, 40]


def test_sequence_cap_is_the_shortest_that_keeps_the_share_whole():
    lengths = list(range(1, 101))
    assert sequence_cap(lengths, 0.95) == 95
    assert sequence_cap(lengths, 1.0) == 100
    assert sum(n <= sequence_cap([7, 300, 12, 12], 0.75) for n in [7, 300, 12, 12]) == 3
    with pytest.raises(ValueError, match="coverage"):
        sequence_cap(lengths, 0)


def test_heldout_documents_avoid_training_and_calibration_text(shared_data, default_model):
    from sdd_plugin.models import load_tokenizer
    from sdd_plugin.prune.calibration import load_calibration_texts

    instructions, rows = heldout_instructions(shared_data, 16, train_set("dolly", 512))
    assert len(instructions) == 16 and rows[0] >= 512 and rows == sorted(set(rows))
    with pytest.raises(ValueError, match="inside the 15000 training rows"):
        heldout_instructions(shared_data, 16, train_set("dolly", 15000))
    tok = load_tokenizer(default_model)
    calibration = load_calibration_texts(shared_data / "wikitext2" / "wiki.test.raw", limit=64)
    passages = wikitext_passages(tok, shared_data, 40, 128, calibration)
    assert len({d.text for d in passages}) == 40
    assert not any(c.strip()[:60] in d.text for d in passages for c in calibration)
    lengths = [len(tok(d.text, add_special_tokens=False)["input_ids"]) for d in passages]
    assert all(abs(n - 128) <= 2 for n in lengths)


def test_model_cost_counts_parameters_and_times_both_models(tiny_models):
    import torch

    from sdd_plugin.bench.model_cost import compare_throughput, flops_per_token, model_shape

    big, small = tiny_models("llama", 6), tiny_models("llama", 3)
    shape = model_shape(big)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(big, dtype=torch.float32)
    assert shape["params"] == sum(p.numel() for p in model.parameters())
    assert shape["nonembedding_params"] == shape["params"] - model.get_input_embeddings().weight.numel()
    f6, f3 = flops_per_token(shape, 64), flops_per_token(model_shape(small), 64)
    per_block = (f6["flops"] - f3["flops"]) / 3
    assert f3["flops"] == pytest.approx(f6["flops"] - 3 * per_block)
    assert f6["flops_with_head"] - f6["flops"] == 2 * shape["hidden_size"] * shape["vocab_size"]
    tp = compare_throughput({"six": big, "three": small}, batch=2, prompt_tokens=16, new_tokens=4, rounds=1)
    assert set(tp) == {"six", "three"} and all(v["decode_tokens_per_s"] > 0 for v in tp.values())


def _raw_for_summary(rng_seed: int = 0) -> dict:
    """A study's raw scores for two documents sets and three checkpoints (values made up)."""
    import random

    rnd = random.Random(rng_seed)
    steps = [10, 20, 40]

    def docs(scale):  # (sum KL, tokens, nll, ref_nll, bytes)
        return [[scale * (1 + rnd.random()) * 50, 50, 100.0 * scale, 90.0, 200] for _ in range(30)]

    scores = {"pruned": {n: {"pruned": docs(1.0)} for n in ("instruct", "gsm8k")}}
    scores["sft"] = {
        n: {str(s): docs(0.9 - 0.01 * i) for i, s in enumerate(steps)} for n in ("instruct", "gsm8k")
    }
    scores["sdd"] = {
        n: {str(s): docs(0.7 - 0.05 * i) for i, s in enumerate(steps)} for n in ("instruct", "gsm8k")
    }
    correct = [1, 0] * 50
    choices = {
        "arc_easy": {
            lab: {"items": 100, "acc": 0.5, "correct": correct} for lab in ("pruned", "sft@40", "sdd@40")
        }
    }
    order = {"rows": 4, "order": [2, 0, 3, 1], "at_cap": 0}
    return {
        "preset": {"checkpoints": steps, "bootstrap": 200, "rows": 4},
        "resolved": {"accuracy_steps": [40]},
        "compared": ["sdd", "sft"],
        "scores": scores,
        "choices": choices,
        "training": {a: {"checkpoints": {str(s): "" for s in steps}, "order": order} for a in ("sft", "sdd")},
        "distill": {},
    }


def test_summary_recovery_is_zero_for_pruned_and_gaps_are_paired():
    res = summarise(_raw_for_summary())
    instruct = res["measures"]["instruct"]
    assert instruct["arms"]["pruned"]["pruned"]["recovery"] == 0
    rec = {a: instruct["arms"][a]["40"]["recovery"] for a in ("sft", "sdd")}
    gap = instruct["gaps"]["40"]
    assert gap["gap"] == pytest.approx(100 * (rec["sdd"] - rec["sft"]))
    assert gap["ci95"][0] < gap["gap"] < gap["ci95"][1] and gap["ci95"][0] > 0
    lo, hi = instruct["arms"]["sdd"]["40"]["recovery_ci95"]
    assert lo < rec["sdd"] < hi
    assert res["accuracy"]["arc_easy"]["gaps"]["40"]["gap"] == 0
    assert all(c["ok"] for c in res["checks"].values()), res["checks"]
    assert res["target"]["kl_met"] is (gap["gap"] >= 10) and res["target"]["accuracy_met"] is True


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, shared_data):
    run_dir = tmp_path / "drift-quick"
    try:
        results = run_drift("quick", run_dir, data_root=shared_data, echo=lambda _: None)
        preset = get_drift_preset("quick")
        for name in ("REPORT.md", "results.json", "curves.png"):
            assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0
        assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((run_dir / "results.json").read_text())["target"] == results["target"]
        report = (run_dir / "REPORT.md").read_text()
        for section in ("## Target", "## Curves", "## Pruning", "## Self-distillation", "## Time per stage"):
            assert section in report

        assert all(c["ok"] for c in results["checks"].values()), results["checks"]
        steps = [str(s) for s in preset.checkpoints]
        for name, entry in results["measures"].items():
            assert entry["arms"]["pruned"]["pruned"]["recovery"] == 0  # by definition
            for arm in ("sft", "sdd"):
                assert list(entry["arms"][arm]) == steps
                assert all(math.isfinite(r["kl"]) and r["kl"] > 0 for r in entry["arms"][arm].values())
            docs = {
                "instruct": preset.instruct_docs,
                "wikitext": preset.wikitext_docs,
                "gsm8k": preset.gsm8k_docs,
            }
            assert entry["documents"] == docs[name]
        orders = [results["training"][a]["order"]["order"] for a in ("sft", "sdd")]
        assert orders[0] == orders[1] and sorted(orders[0]) == list(range(preset.rows))
        assert results["plan"]["whole_rows"]["sft"] >= 0.95 or not results["plan"]["computed"]
        for task, n in preset.choice_items.items():
            assert set(results["accuracy"][task]["items"].values()) == {n}
        tries = results["distill"]["acceptance_by_try"]
        assert (
            tries[0]["rows"] == preset.rows
            and sum(t["accepted"] for t in tries) == results["distill"]["accepted"]
        )
        pruning = results["pruning"]
        assert pruning["num_layers_before"] - pruning["num_layers_after"] == preset.num_blocks
        # `sdd report` on the study's folder writes the study's page, not the generic one
        from sdd_plugin.report import build_report

        page = (run_dir / "REPORT.md").read_text()
        assert page.startswith("# Forgetting-curve study")
        assert build_report(run_dir).read_text() == page
        assert pruning["pruned_shape"]["params"] < pruning["original_shape"]["params"]
    finally:
        shutil.rmtree(stage_root(run_dir.resolve()), ignore_errors=True)

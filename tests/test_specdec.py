"""sdd specdec: assisted generation with a draft; acceptance counting, identical greedy outputs."""

from __future__ import annotations

import json
import shutil

import pytest

from sdd_plugin.specdec import _Pass, _walk_passes, default_prompts, load_prompts, measure_specdec

PROMPTS = ["Hello there, how are you today?", "What is two plus two?"]


def test_walk_passes_counts_accepted_prefix():
    prompt = [7, 8, 9]
    out = prompt + [10, 11, 12, 13, 14, 15]
    passes = [
        _Pass(5, 7, prompt + [10, 11]),  # 2 proposed, both accepted, target adds 12
        _Pass(4, 12, [12, 13, 99, 98]),  # 3 proposed, 1 accepted (13), target corrects to 14
        _Pass(2, 14, [14, 15]),  # 1 proposed, accepted; output ends
    ]
    walk = _walk_passes(passes, len(prompt), out)
    assert walk["proposed"] == [2, 3, 1] and walk["accepted"] == [2, 1, 1]
    assert walk["consistent"]
    # a pass that does not start from the last accepted output token is flagged
    bad = [passes[0], _Pass(4, 99, [99, 13, 14, 15])]
    assert not _walk_passes(bad, len(prompt), out)["consistent"]


def test_draft_equal_to_target_accepts_everything(tiny_models, tmp_path):
    model = tiny_models("llama", 4)
    result = measure_specdec(
        model, model, prompts=PROMPTS, max_new_tokens=16, num_assistant_tokens=4, out=tmp_path / "sd"
    )
    s = result["summary"]
    assert s["all_identical"] and s["identical_outputs"] == 2
    assert s["acceptance_rate"] == 1.0
    assert s["counts_consistent"]
    # 4 draft tokens accepted per step, plus the target's own token
    assert s["tokens_per_step"] > 3.0 and s["accepted_per_step"] > 2.5
    # the summary's speed figures are the per-prompt timings it records
    rows = result["prompts"]
    t_target, t_assisted = (sum(r[k] for r in rows) for k in ("time_target_s", "time_assisted_s"))
    assert s["speedup"] == pytest.approx(t_target / t_assisted)
    assert s["assisted_tokens_per_s"] == pytest.approx(sum(r["new_tokens"] for r in rows) / t_assisted)
    for row in result["prompts"]:
        assert row["new_tokens"] == 16
        assert row["accepted"] == row["proposed"] == row["draft_forward_passes"]
        assert row["target_steps"] < row["new_tokens"]
    data = json.loads((tmp_path / "sd" / "specdec.json").read_text())
    assert data["summary"] == s and "noisy" in data["warning"]
    assert (tmp_path / "sd" / "specdec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "acceptance rate" in (tmp_path / "sd" / "specdec.md").read_text()


def test_lora_draft_keeps_greedy_output(tiny_models, tmp_path):
    """A different draft (the target plus a random LoRA, merged in memory) is rejected often, but
    assisted greedy decoding must still reproduce the target's own output token for token."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = tiny_models("llama", 4)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora).save_pretrained(tmp_path / "adapter")
    result = measure_specdec(
        model, tmp_path / "adapter", prompts=PROMPTS, max_new_tokens=16, num_assistant_tokens=3
    )
    s = result["summary"]
    assert result["draft_kind"] == "lora"
    assert s["all_identical"]
    assert s["counts_consistent"]
    assert 0.0 <= s["acceptance_rate"] < 1.0
    assert s["accepted_draft_tokens"] <= s["proposed_draft_tokens"]
    assert 1.0 <= s["tokens_per_step"] < 4.0


def test_bad_input_raises_before_loading(tiny_models, tmp_path):
    model = tiny_models("llama", 4)
    other = tmp_path / "other-vocab"
    shutil.copytree(model, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "model.safetensors").write_bytes(b"not weights")  # proves nothing is loaded
    with pytest.raises(ValueError, match="vocab_size"):
        measure_specdec(model, other, prompts=PROMPTS)
    with pytest.raises(ValueError, match="max_new_tokens"):
        measure_specdec(model, model, prompts=PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="prompts"):
        measure_specdec(model, model, prompts=[""])
    with pytest.raises(FileNotFoundError):
        measure_specdec(model, tmp_path / "missing", prompts=PROMPTS)


def test_prompt_files_and_cli(tiny_models, tmp_path):
    from sdd_plugin.cli import main

    assert len(default_prompts()) == 16 and len(set(default_prompts())) == 16
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(txt) == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"question": "q1"}) + "\n" + json.dumps({"instruction": "i2"}) + "\n")
    assert load_prompts(jl) == ["q1", "i2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"answer": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_prompts(bad)

    model = str(tiny_models("llama", 4))
    out = tmp_path / "cli"
    args = ["specdec", "--target", model, "--draft", model, "--prompts", str(txt), "--max-new-tokens", "6"]
    assert main(args + ["--num-assistant-tokens", "2", "--out", str(out)]) == 0
    assert json.loads((out / "specdec.json").read_text())["summary"]["num_prompts"] == 2
    assert main(["specdec", "--target", model, "--draft", model, "--prompts", str(tmp_path / "nope.txt"),
                 "--out", str(out)]) == 2  # fmt: skip


@pytest.mark.slow
def test_default_model_with_pruned_draft(default_model, tmp_path):
    from sdd_plugin.prune import prune

    pruned = prune(default_model, num_blocks=6, num_samples=8, max_length=64, out=tmp_path / "pruned")
    result = measure_specdec(
        default_model,
        pruned.out_dir,
        prompts=default_prompts()[:2],
        max_new_tokens=16,
        num_assistant_tokens=3,
        out=tmp_path / "sd",
    )
    s = result["summary"]
    assert s["all_identical"], [r["first_mismatch"] for r in result["prompts"]]
    assert 0.0 < s["acceptance_rate"] <= 1.0
    assert s["tokens_per_step"] > 1.0
    assert s["counts_consistent"]
    rows = result["prompts"]
    t_target, t_assisted = (sum(r[k] for r in rows) for k in ("time_target_s", "time_assisted_s"))
    assert s["speedup"] == pytest.approx(t_target / t_assisted)

"""End to end on the embedded default model: `sdd prune --num-blocks 6` -> a 24-block model that talks."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def test_sdd_prune_default_model(default_model, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdd_plugin import cli
    from sdd_plugin.prune import count_parameters, decoder_layers

    out = tmp_path / "pruned"
    assert (
        cli.main(["prune", "--model", "smollm2-135m-instruct", "--num-blocks", "6", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "layers: 30 -> 24" in printed

    source = AutoModelForCausalLM.from_pretrained(default_model)
    one_block = count_parameters(decoder_layers(source)[0])
    assert one_block == 3_540_096  # hidden 576, MLP 1536, 9 query / 3 KV heads of 64, two norms
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 24 and len(decoder_layers(model)) == 24
    assert count_parameters(source) - count_parameters(model) == 6 * one_block

    meta = json.loads((out / "sdd_prune.json").read_text())
    removed = meta["removed_blocks"]
    assert (
        removed == list(range(removed[0], removed[0] + 6))
        and meta["params_before"] - meta["params_after"] == 6 * one_block
    )
    assert f"{6 * one_block:,}" in printed and str(removed) in printed
    assert str(removed) in (out / "README.md").read_text() and (out / "heatmap.png").is_file()
    # the kept blocks are the source's blocks, in order
    kept = [i for i in range(30) if i not in removed]
    src_state, new_state = source.state_dict(), model.state_dict()
    for new_idx, old_idx in [(0, kept[0]), (removed[0], kept[removed[0]]), (23, kept[23])]:
        key = f"model.layers.{new_idx}.mlp.down_proj.weight"
        assert torch.equal(new_state[key], src_state[key.replace(f".{new_idx}.", f".{old_idx}.")])

    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        cached = model.generate(**enc, max_new_tokens=24, do_sample=False, use_cache=True)
        plain = model.generate(**enc, max_new_tokens=24, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)  # KV cache of the renumbered layers is consistent
    answer = tok.decode(cached[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    # Unhealed, the 24-block model answers in fluent English on topic (before SDD fine-tuning it
    # says e.g. "The capital of the United Kingdom is England, ..."); it is not yet factual.
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 5 and "capital" in answer.lower(), answer
    assert sum(len(w) for w in words) >= 0.7 * len(answer.replace(" ", "")), answer

    # same command again: the finished folder is reused, not recomputed
    assert (
        cli.main(["prune", "--model", "smollm2-135m-instruct", "--num-blocks", "6", "--out", str(out)]) == 0
    )
    assert "reused" in capsys.readouterr().out

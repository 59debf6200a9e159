"""Pruning surgery on tiny random models of every supported architecture, and the prune API."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from sdd_plugin import plugins
from sdd_plugin.prune import count_parameters, decoder_layers, prune, remove_blocks, validate_blocks
from sdd_plugin.testing import TINY_ARCHS

pytestmark = pytest.mark.filterwarnings("ignore")


def _cached_vs_full_logits(model, prompt_len: int = 24, new_tokens: int = 6):
    """Greedy generation with the KV cache vs one no-cache forward over the generated sequence."""
    torch.manual_seed(0)
    ids = torch.randint(3, 2000, (2, prompt_len))
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=2,
    )
    cached = torch.stack(out.logits, dim=1)
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits[:, prompt_len - 1 : prompt_len - 1 + new_tokens]
    return cached, full


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_remove_blocks_save_reload_generate(arch, tiny_models, tmp_path):
    src = tiny_models(arch, 6)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    layer_types = list(getattr(model.config, "layer_types", None) or [])
    removed = [1, 2]
    block_params = sum(count_parameters(decoder_layers(model)[i]) for i in removed)
    before = count_parameters(model)

    assert remove_blocks(model, removed) is model
    assert count_parameters(model) == before - block_params
    assert model.config.num_hidden_layers == 4 and len(decoder_layers(model)) == 4
    if layer_types:
        assert model.config.layer_types == [t for i, t in enumerate(layer_types) if i not in removed]
    idx = [m.layer_idx for layer in decoder_layers(model) for m in layer.modules() if hasattr(m, "layer_idx")]
    assert sorted(set(idx)) == [0, 1, 2, 3]
    # the in-memory model (renumbered layer_idx) must use its KV cache correctly too
    cached, full = _cached_vs_full_logits(model)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)

    model.save_pretrained(tmp_path / "pruned", safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert reloaded.config.num_hidden_layers == 4
    assert count_parameters(reloaded) == before - block_params
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    # 30 positions > gemma3's sliding window of 16: the sliding/full pattern must survive the surgery
    cached, full = _cached_vs_full_logits(reloaded)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


def test_gemma3_layer_types_follow_the_kept_blocks(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models("gemma3", 6)).eval()
    assert model.config.layer_types[5] == "full_attention"  # 1 full layer every 6 in gemma3
    remove_blocks(model, [0, 5])
    assert model.config.layer_types == ["sliding_attention"] * 4
    assert all(layer.self_attn.is_sliding for layer in decoder_layers(model))


def test_remove_blocks_rejects_bad_indices(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models("llama", 6))
    for bad, word in (
        ([6], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "duplicate"),
        ([], "no blocks"),
    ):
        with pytest.raises(ValueError, match=word):
            remove_blocks(model, bad)
    with pytest.raises(ValueError, match="at least one"):
        validate_blocks(list(range(6)), 6)
    assert len(decoder_layers(model)) == 6  # untouched after the errors


def _read_meta(folder):
    return json.loads((folder / "sdd_prune.json").read_text())


def test_prune_writes_checkpoint_and_model_card(tiny_models, tmp_path):
    src = tiny_models("qwen3", 6)
    res = prune(
        str(src),
        num_blocks=2,
        metric="angular",
        out=tmp_path / "p",
        num_samples=8,
        max_length=32,
        batch_size=4,
    )
    out = tmp_path / "p"
    assert res.out_dir == out and res.num_layers_before == 6 and res.num_layers_after == 4
    assert len(res.removed_blocks) == 2 and res.removed_blocks[1] == res.removed_blocks[0] + 1
    assert res.removed_blocks == res.score_result.removed(2)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
        "heatmap.png",
    ):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert str(src) in card and "angular" in card and str(res.removed_blocks) in card
    assert f"{res.params_before:,}" in card and f"{res.params_after:,}" in card
    assert "| n | l* | d(l*, n) |" in card
    meta = _read_meta(out)
    assert meta["removed_blocks"] == res.removed_blocks and len(meta["score"]["table"]) == 7
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    source = AutoModelForCausalLM.from_pretrained(src)
    removed_params = sum(count_parameters(decoder_layers(source)[i]) for i in res.removed_blocks)
    assert (
        res.params_before - res.params_after
        == removed_params
        == count_parameters(source) - count_parameters(model)
    )


def test_prune_explicit_start_and_cache_reuse(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SDD_CACHE_DIR", str(tmp_path / "cache"))
    src = tiny_models("llama", 6)
    kw = dict(num_blocks=3, start=1, num_samples=4, max_length=16, batch_size=4)
    first = prune(str(src), **kw)
    assert first.removed_blocks == [1, 2, 3] and not first.reused
    assert first.out_dir.parent == tmp_path / "cache" / "pruned"
    second = prune(str(src), **kw)
    assert second.reused and second.out_dir == first.out_dir and second.removed_blocks == [1, 2, 3]
    other = prune(str(src), **{**kw, "start": 2})
    assert other.out_dir != first.out_dir and other.removed_blocks == [2, 3, 4]
    # an incomplete folder (no sdd_prune.json) is redone, not reused
    (first.out_dir / "sdd_prune.json").unlink()
    third = prune(str(src), **kw)
    assert not third.reused and (third.out_dir / "sdd_prune.json").is_file()


def test_prune_refuses_to_clobber_out(tiny_models, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        prune(str(tiny_models("llama", 6)), num_blocks=1, start=0, out=out)


@pytest.fixture
def config_only(tiny_models, tmp_path):
    """A model folder with config.json but no weights: loading weights would fail with OSError,
    so a ValueError/FileNotFoundError about the input proves validation ran before loading."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(tiny_models("llama", 6) / "config.json", folder / "config.json")
    return str(folder)


@pytest.mark.parametrize("n", [0, -1, 6, 7])
def test_prune_bad_num_blocks_before_loading(config_only, n):
    with pytest.raises(ValueError, match=f"num_blocks={n}"):
        prune(config_only, num_blocks=n)


def test_prune_bad_inputs_before_loading(config_only, tmp_path):
    with pytest.raises(plugins.UnknownPluginError, match="nope"):
        prune(config_only, num_blocks=2, metric="nope")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prune(config_only, num_blocks=2, calibration=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        prune(config_only, num_blocks=2, calibration=str(empty))
    with pytest.raises(ValueError, match="start=5"):
        prune(config_only, num_blocks=2, start=5)
    with pytest.raises(ValueError, match="tokens"):
        prune(config_only, num_blocks=2, tokens="middle")

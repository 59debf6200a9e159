"""Block scoring: the one-pass table against a brute-force reference, padding, metrics, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from sdd_plugin import cli, contiguous_argmin, plugins
from sdd_plugin.models import load_tokenizer
from sdd_plugin.prune import decoder_layers
from sdd_plugin.prune.scoring import ScoreResult, score_blocks

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A short one.",
    "In 1969 the first humans walked on the Moon, and millions watched it live on television.",
    "Bees tell each other where the flowers are with a dance.",
]


@pytest.fixture(scope="module")
def llama(tiny_models):
    path = tiny_models("llama", 6)
    return AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)


def _reference(model, tok, texts, start, n, tokens):
    """Brute force, one text and one (start, n) at a time: output hooks on blocks start-1 and start+n-1."""
    layers = decoder_layers(model)
    total = 0.0
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        got: dict[str, torch.Tensor] = {}

        def keep(key, got=got):
            return lambda module, args, output: got.__setitem__(key, output)

        first = model.get_input_embeddings() if start == 0 else layers[start - 1]
        hooks = [
            first.register_forward_hook(keep("a")),
            layers[start + n - 1].register_forward_hook(keep("b")),
        ]
        with torch.no_grad():
            model(ids)
        for h in hooks:
            h.remove()
        a, b = got["a"][0].double(), got["b"][0].double()
        if tokens == "last":
            a, b = a[-1:], b[-1:]
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
        total += float((torch.arccos(cos) / math.pi).mean())
    return total / len(texts)


@pytest.mark.parametrize("tokens", ["last", "all"])
def test_one_pass_table_matches_brute_force(llama, tokens):
    model, tok = llama
    res = score_blocks(model, tok, TEXTS, metric="angular", tokens=tokens, batch_size=3, progress=False)
    assert res.table.shape == (7, 7) and res.num_samples == len(TEXTS)
    for start, n in [(0, 1), (1, 2), (2, 4), (3, 3), (5, 1)]:  # (3, 3), (5, 1) end at the last block's output
        ref = _reference(model, tok, TEXTS, start, n, tokens)
        assert res.distance(start, n) == pytest.approx(ref, abs=2e-5)
    for n in range(1, 6):
        best = res.best_start[n]
        assert res.distance(best, n) == min(res.distance(s, n) for s in range(0, 7 - n))


def test_last_block_output_is_not_the_final_norm(llama):
    """table[l, L] must use the raw residual stream, not transformers' normed hidden_states[-1]."""
    import copy

    model, tok = llama
    model = copy.deepcopy(model)
    with torch.no_grad():  # a non-trivial final norm gain, so the normed output points elsewhere
        model.model.norm.weight.copy_(
            torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(0)) + 0.2
        )
    res = score_blocks(model, tok, TEXTS[:2], tokens="last", progress=False)
    via_norm = 0.0
    for text in TEXTS[:2]:
        with torch.no_grad():
            hs = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        cos = torch.nn.functional.cosine_similarity(hs[0][0, -1], hs[-1][0, -1], dim=0).clamp(-1, 1)
        via_norm += float(torch.arccos(cos)) / math.pi / 2
    assert res.distance(0, 6) == pytest.approx(_reference(model, tok, TEXTS[:2], 0, 6, "last"), abs=2e-5)
    assert abs(res.distance(0, 6) - via_norm) > 1e-3


@pytest.mark.parametrize("tokens", ["last", "all"])
def test_padding_invariance(llama, tokens):
    model, tok = llama
    short, long = TEXTS[2], TEXTS[3]
    alone = score_blocks(model, tok, [short], tokens=tokens, batch_size=1, progress=False).table
    other = score_blocks(model, tok, [long], tokens=tokens, batch_size=1, progress=False).table
    padded = score_blocks(model, tok, [short, long], tokens=tokens, batch_size=2, progress=False).table
    torch.testing.assert_close(padded, (alone + other) / 2, atol=2e-5, rtol=1e-4)
    # batching must not change the result either
    batched = score_blocks(model, tok, TEXTS, tokens=tokens, batch_size=2, progress=False).table
    single = score_blocks(model, tok, TEXTS, tokens=tokens, batch_size=5, progress=False).table
    torch.testing.assert_close(batched, single, atol=2e-5, rtol=1e-4)


def test_bi_metric_and_last_baseline(llama):
    model, tok = llama
    bi = score_blocks(model, tok, TEXTS, metric="bi", progress=False)
    assert bi.tokens == "all"
    influence = [float(bi.table[i, i + 1]) for i in range(6)]
    # reference: 1 - mean over tokens of cos(x_i, x_i+1), averaged over samples
    ref = []
    for i in range(6):
        vals = []
        for text in TEXTS:
            with torch.no_grad():
                hs = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            if i + 1 < 6:  # hidden_states[6] is the normed output: compare only inner blocks
                cos = torch.nn.functional.cosine_similarity(hs[i][0], hs[i + 1][0], dim=-1)
                vals.append(float(1 - cos.mean()))
        if vals:
            ref.append(sum(vals) / len(vals))
    assert influence[:5] == pytest.approx(ref, abs=2e-5)
    removed = bi.removed(2)
    lowest = sorted(range(6), key=lambda i: influence[i])[:2]
    assert removed == sorted(lowest)
    last = score_blocks(model, tok, TEXTS, metric="last", progress=False)
    assert last.removed(2) == [3, 4] and last.removed(5) == [0, 1, 2, 3, 4]


def test_metric_selection_on_a_known_table():
    table = torch.ones(7, 7)
    table[3, 5] = 0.1  # n=2: start 3
    table[1, 2] = 0.05
    table[4, 5] = 0.02  # single-block influence: blocks 4 and 1 are the least important
    assert contiguous_argmin(table, 2) == [3, 4]
    assert plugins.get_metric("angular").select(table, 2) == [3, 4]
    assert plugins.get_metric("bi").select(table, 2) == [1, 4]
    assert plugins.get_metric("last").select(table, 2) == [3, 4]
    assert plugins.get_metric("last").select(table, 1) == [4]
    for name in ("angular", "bi", "last"):
        with pytest.raises(ValueError, match="n=6"):
            plugins.get_metric(name).select(table, 6)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda L: st.tuples(st.just(L), st.integers(1, L - 1), st.integers(0, 2**31 - 1))
    )
)
def test_contiguous_argmin_property(case):
    L, n, seed = case
    table = torch.rand(L + 1, L + 1, generator=torch.Generator().manual_seed(seed))
    blocks = contiguous_argmin(table, n)
    assert len(blocks) == n and blocks == list(range(blocks[0], blocks[0] + n)) and blocks[-1] < L
    assert table[blocks[0], blocks[0] + n] == min(table[s, s + n] for s in range(L - n + 1))


def test_score_blocks_bad_input(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="empty"):
        score_blocks(model, tok, ["", "   "], progress=False)
    with pytest.raises(plugins.UnknownPluginError, match="cosine"):
        score_blocks(model, tok, TEXTS, metric="cosine", progress=False)
    with pytest.raises(ValueError, match="middle"):
        score_blocks(model, tok, TEXTS, tokens="middle", progress=False)


def test_score_result_json_roundtrip_and_heatmap(llama, tmp_path):
    model, tok = llama
    res = score_blocks(model, tok, TEXTS, progress=False)
    data = json.loads(json.dumps(res.to_json()))
    back = ScoreResult.from_json(data)
    assert back.best_start == res.best_start and torch.allclose(back.table, res.table.double(), atol=1e-6)
    assert [r["n"] for r in data["best"]] == list(range(1, 6))
    assert data["d_by_n_start"][2][4] == pytest.approx(res.distance(4, 2), abs=1e-6)
    assert data["d_by_n_start"][2][5] is None  # l + n > L
    png = res.plot_heatmap(tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_score(tiny_models, tmp_path, capsys):
    src = tiny_models("qwen2", 6)
    out = tmp_path / "score"
    code = cli.main(
        ["score", "--model", str(src), "--num-samples", "6", "--max-length", "32", "--out", str(out)]
    )
    assert code == 0
    data = json.loads((out / "score.json").read_text())
    assert data["metric"] == "angular" and data["num_layers"] == 6 and data["num_samples"] == 6
    assert (out / "heatmap.png").stat().st_size > 1000
    assert "| n | l* |" in (out / "score.md").read_text()
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "heatmap.png" in printed
    assert (
        cli.main(["score", "--model", str(src), "--metric", "nope", "--out", str(tmp_path / "score2")]) == 2
    )
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "score",
                "--model",
                str(src),
                "--calibration",
                str(tmp_path / "x.jsonl"),
                "--out",
                str(tmp_path / "score3"),
            ]
        )
        == 2
    )
    assert "x.jsonl" in capsys.readouterr().err

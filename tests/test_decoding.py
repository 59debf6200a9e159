"""The hf backend's decode engine against transformers' own ``generate``, on tiny real models."""

from __future__ import annotations

import pytest
import torch

from sdd_plugin.generation.hf import cpu_linears, prompt_lookup
from sdd_plugin.generation.hf.attention import (
    gqa_sdpa_attention_forward,
    register_gqa_attention,
    row_column_kwargs,
    row_groups,
)
from sdd_plugin.generation.hf.cpu_linears import CpuLinears
from sdd_plugin.generation.hf.decoding import decode_batch
from sdd_plugin.generation.hf.kv_cache import full_attention_only
from sdd_plugin.generation.hf.prefill import common_prefix_length, prefill
from sdd_plugin.interfaces import GenerationSettings
from sdd_plugin.testing import TINY_ARCHS

PROMPTS = [
    "Shared system text. Question: what is two plus two?",
    "Shared system text. Question: name a colour of the sky on a clear summer day, please.",
    "Shared system text. Q: hi",
    "Shared system text. Question: write one word.",
    "Shared system text. Question: a much longer question that goes on for a while, with many words "
    "so that the padding in a batch is substantial and the prefix is shared by every row.",
]


def _load(path, attention: str | None = None):
    from sdd_plugin.models import load_model

    model, tok = load_model(str(path), dtype="float32")
    if attention == "gqa" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(register_gqa_attention())
    return model.eval(), tok


def _reference(model, tok, prompts, max_new_tokens, eos_ids) -> list[list[int]]:
    """Per-row ``model.generate`` (no padding), cut after the first EOS."""
    outs = []
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_ids,
                pad_token_id=eos_ids[0],
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        stop = next((j for j, t in enumerate(new) if t in eos_ids), None)
        outs.append(new if stop is None else new[: stop + 1])
    return outs


def _batch(tok, prompts):
    order = sorted(
        range(len(prompts)), key=lambda i: -len(tok(prompts[i], add_special_tokens=False)["input_ids"])
    )
    enc = tok(
        [prompts[i] for i in order],
        return_tensors="pt",
        padding=True,
        padding_side="left",
        add_special_tokens=False,
    )
    return order, enc


@pytest.mark.parametrize(
    "lookup, tokens_per_step", [(0, 64), (3, 64), (3, 6)], ids=["plain", "prompt-lookup", "lookup-late"]
)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_decode_batch_matches_per_row_generate(tiny_models, arch, lookup, tokens_per_step, monkeypatch):
    """Greedy tokens equal per-row ``generate`` with stock attention, including rows that stop
    early (their EOS is a token they emit) and leave the batch, for every tiny architecture
    (gemma3's sliding layers take the DynamicCache path). ``lookup-late`` starts with plain
    steps and switches to prompt lookup once at most 3 rows run."""
    monkeypatch.setattr(prompt_lookup, "LOOKUP_TOKENS_PER_STEP", tokens_per_step)
    path = tiny_models(arch)
    stock, tok = _load(path)
    max_new = 10
    # make rows stop at different steps: use tokens the model really emits as extra EOS ids
    probe = _reference(stock, tok, PROMPTS, max_new, [2])
    eos_ids = sorted({2, probe[0][3], probe[2][1]})
    expected = _reference(stock, tok, PROMPTS, max_new, eos_ids)
    assert len({len(e) for e in expected}) > 1, "the test needs rows of different lengths"

    fast, _ = _load(path, attention="gqa")
    order, enc = _batch(tok, PROMPTS)
    got = decode_batch(
        fast,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new,
        eos_ids=eos_ids,
        prompt_lookup=lookup,
    )
    for slot, row in enumerate(order):
        assert got[slot] == expected[row], f"row {row} ({arch})"


def test_gqa_attention_equals_stock_sdpa_with_padding():
    """One query per row against an unexpanded, left-padded KV cache: same output as ``sdpa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim = 3, 8, 2, 11, 16
    q = torch.randn(batch, heads, 1, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, :, :, :4] = False  # left padding
    mask[2, :, :, :7] = False
    module = torch.nn.Module()
    module.num_key_value_groups = heads // kv_heads
    module.is_causal = True
    fast, _ = gqa_sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    assert fast.shape == ref.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)

    # several queries per row (prompt-lookup verification) with a per-row causal 4D mask
    queries = 4
    q = torch.randn(batch, heads, queries, dim)
    mask = torch.ones(batch, 1, queries, length, dtype=torch.bool).tril(diagonal=length - queries)
    mask[0, :, :, :4] = False
    mask[2, :, :, :7] = False
    fast, _ = gqa_sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    assert fast.shape == ref.shape == (batch, queries, heads, dim)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("queries", [1, 4])
def test_row_grouped_attention_skips_only_masked_columns(queries):
    """Attention in runs of rows, each reading the cache from its first real column, equals
    attention over the whole padded cache; a run that started at a real column would not."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim = 5, 6, 2, 13, 8
    pads = [0, 2, 3, 6, 9]  # left padding per row, sorted like a length-sorted batch
    q = torch.randn(batch, heads, queries, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    mask = torch.ones(batch, 1, queries, length, dtype=torch.bool).tril(diagonal=length - queries)
    for row, pad in enumerate(pads):
        mask[row, :, :, :pad] = False
    module = torch.nn.Module()
    module.num_key_value_groups = heads // kv_heads
    module.is_causal = True
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    groups = row_groups(pads, rows_per_call=2)
    assert groups == [(0, 2, 0), (2, 4, 3), (4, 5, 9)]
    fast, _ = gqa_sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5, sdd_row_groups=groups)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    wrong, _ = gqa_sdpa_attention_forward(
        module, q, k, v, mask, scaling=dim**-0.5, sdd_row_groups=[(0, 5, 1)]
    )  # row 0's first column is real: skipping it changes row 0 only
    assert not torch.allclose(wrong[0], ref[0], atol=1e-4)
    torch.testing.assert_close(wrong[1:], ref[1:], rtol=1e-5, atol=1e-6)


def _kernel():
    from sdd_plugin.generation.hf.kernel import _compiler, decode_attention_kernel

    if _compiler() is None:
        pytest.skip("no C compiler on this machine: the engine stays on SDPA")
    kernel = decode_attention_kernel()
    assert kernel is not None, "a C compiler is here, so the kernel must build and pass its self-check"
    return kernel


@pytest.mark.parametrize("group, dim", [(1, 8), (2, 16), (3, 64), (5, 24), (8, 128)])
def test_decode_attention_kernel_equals_sdpa_on_each_rows_columns(group, dim):
    """The C kernel (via ``sdd_first_columns``) equals stock SDPA with the padding mask, for
    group sizes 1-8, head sizes 8-128, odd lengths and a row with a single real column; a wrong
    first column changes exactly that row; a first column past the end is refused."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _kernel()
    torch.manual_seed(group * 100 + dim)
    batch, kv_heads, length = 5, 3, 21
    heads = kv_heads * group
    firsts = [0, 3, 4, 11, 20]  # row 4 attends one column
    q = torch.randn(batch, heads, 1, dim)
    k = torch.randn(batch, kv_heads, length + 6, dim)[:, :, :length]  # a view of a larger buffer
    v = torch.randn(batch, kv_heads, length + 6, dim)[:, :, :length]
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    for row, first in enumerate(firsts):
        mask[row, :, :, :first] = False
    module = torch.nn.Module()
    module.num_key_value_groups = group
    module.is_causal = True
    module.training = False
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    cols = torch.tensor(firsts)
    fast, _ = gqa_sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5, sdd_first_columns=cols)
    assert fast.shape == ref.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    wrong, _ = gqa_sdpa_attention_forward(
        module, q, k, v, mask, scaling=dim**-0.5, sdd_first_columns=torch.tensor([0, 3, 5, 11, 20])
    )
    assert not torch.allclose(wrong[2], ref[2], atol=1e-4)
    torch.testing.assert_close(wrong[[0, 1, 3, 4]], ref[[0, 1, 3, 4]], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="start column"):
        gqa_sdpa_attention_forward(
            module, q, k, v, mask, scaling=dim**-0.5, sdd_first_columns=torch.tensor([0, 3, 4, 11, length])
        )


def test_kernel_reads_the_shared_prefix_from_row_zero():
    """With ``shared_columns`` the kernel reads every row's first columns from row 0: the result
    is exact when the rows really share them (as the engine's prefilled prompts do), a row whose
    own copy differs is not read, and a prefix longer than a row's columns is refused."""
    kernel = _kernel()
    torch.manual_seed(7)
    batch, kv_heads, group, dim, length, shared = 4, 2, 3, 16, 30, 5
    firsts = torch.tensor([2, 0, 9, 24])
    q = torch.randn(batch, kv_heads * group, 1, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    for row in range(1, batch):
        c, c0 = int(firsts[row]), int(firsts[0])
        k[row, :, c : c + shared], v[row, :, c : c + shared] = (
            k[0, :, c0 : c0 + shared],
            v[0, :, c0 : c0 + shared],
        )
    ref = kernel(q, k, v, firsts)
    assert torch.equal(kernel(q, k, v, firsts, shared_columns=shared), ref)
    k[2, :, 9 : 9 + shared] += 1.0  # row 2's own copy of the prefix no longer matches row 0's
    assert torch.equal(kernel(q, k, v, firsts, shared_columns=shared), ref)
    assert not torch.allclose(kernel(q, k, v, firsts)[2], ref[2], atol=1e-4)
    with pytest.raises(RuntimeError, match="shared prefix"):
        kernel(q, k, v, firsts, shared_columns=length - 24 + 1)


def test_kernel_is_cached_and_shares_torchs_openmp_runtime():
    """The kernel builds once into the cache (a second build returns the same file) and loading
    it beside torch maps no new OpenMP runtime (two would spin against each other); checked in a
    fresh process so only torch's runtime is there before."""
    import subprocess
    import sys

    from sdd_plugin.generation.hf.kernel import build_decode_attention

    kernel = _kernel()
    # the same build key (file name); the folder is whichever cache was current when the process
    # first loaded the kernel (another test may have pointed SDD_CACHE_DIR elsewhere)
    assert kernel.library.name == build_decode_attention().name
    code = (
        "import torch; from sdd_plugin.generation.hf import kernel as k; before = k.openmp_runtimes(); "
        "assert k.decode_attention_kernel() is not None; print(sorted(before)); print(sorted(k.openmp_runtimes()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.strip().splitlines()[-2:]
    assert after == before


def test_cached_kernel_built_from_other_source_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """A library in the kernel cache is reused only when its build record matches this source
    and its bytes: a stale library under the expected name, a record naming another build, or no
    record at all make the next build compile the real source again (real compiles)."""
    import json
    import os
    import subprocess

    from sdd_plugin.cache import file_hash
    from sdd_plugin.generation.hf.kernel import (
        DecodeAttention,
        _compiler,
        _self_check,
        build_decode_attention,
        build_record,
    )

    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine: the engine stays on SDPA")
    monkeypatch.setenv("SDD_CACHE_DIR", str(tmp_path / "cache"))
    library = build_decode_attention()
    record = json.loads(build_record(library).read_text())
    assert record["library_sha256"] == file_hash(library, 64)
    inode = library.stat().st_ino
    assert build_decode_attention() == library and library.stat().st_ino == inode  # reused as is

    # a library built from other C source, exporting the same symbol
    stub_source = tmp_path / "stub.c"
    stub_source.write_text("int sdd_decode_attention(void) { return 1; }\n")
    stub = tmp_path / "stub.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(stub), str(stub_source)], check=True)
    with pytest.raises(RuntimeError, match="decode attention kernel"):
        _self_check(DecodeAttention(stub))  # loading it would break decode attention

    def plant(new_record):
        library.write_bytes(stub.read_bytes())
        if new_record is None:
            os.unlink(build_record(library))
        else:
            build_record(library).write_text(json.dumps(new_record))

    stub_hash = file_hash(stub, 64)
    for planted in (
        record,  # stale bytes under the expected name, the real build's record beside them
        {"build_key": "0" * 64, "library_sha256": stub_hash},  # a record of another build
        None,  # no record (a cache from before records existed)
    ):
        plant(planted)
        rebuilt = build_decode_attention()
        assert rebuilt == library
        assert rebuilt.read_bytes() != stub.read_bytes()
        assert json.loads(build_record(rebuilt).read_text())["build_key"] == record["build_key"]
        assert file_hash(rebuilt, 64) == json.loads(build_record(rebuilt).read_text())["library_sha256"]
    assert _self_check(DecodeAttention(library))


def test_engine_runs_decode_steps_on_the_kernel_and_sdpa_agrees(tiny_models, monkeypatch):
    """With the kernel, every plain decode step's attention goes through it; with
    ``SDD_DECODE_KERNEL=0`` none does, and the greedy tokens are the same."""
    from sdd_plugin.generation.hf.kernel import DecodeAttention

    _kernel()
    calls = []
    original = DecodeAttention.__call__

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DecodeAttention, "__call__", counting)
    model, tok = _load(tiny_models("llama"), attention="gqa")
    _, enc = _batch(tok, PROMPTS)
    run = dict(max_new_tokens=6, eos_ids=[-1])
    with_kernel = decode_batch(model, enc["input_ids"], enc["attention_mask"], **run)
    layers = model.config.num_hidden_layers
    assert len(calls) == 5 * layers and set(calls) == {len(PROMPTS)}  # 5 steps after the prefill
    calls.clear()
    monkeypatch.setenv("SDD_DECODE_KERNEL", "0")
    without = decode_batch(model, enc["input_ids"], enc["attention_mask"], **run)
    assert calls == []
    assert with_kernel == without


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_lean_decode_step_gives_the_stock_forwards_logits_bit_for_bit(tiny_models, arch, monkeypatch):
    """The lean step (the model's modules without transformers' per-call plumbing) returns exactly
    the logits of the stock forward, for one token a row and for several tokens a row written at
    per-row columns (prompt lookup); models with sliding-window layers (gemma3, mistral's config)
    and ``SDD_LEAN_DECODE=0`` get None, i.e. the stock forward."""
    from sdd_plugin.generation.hf.lean_step import LeanDecodeStep

    _kernel()
    model, tok = _load(tiny_models(arch), attention="gqa")
    if not full_attention_only(model.config):
        assert LeanDecodeStep.for_model(model) is None
        return
    _, enc = _batch(tok, PROMPTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    width = ids.shape[1]
    with torch.inference_mode(), CpuLinears(model):
        lean = LeanDecodeStep.for_model(model)
        assert lean is not None
        assert lean.fits(3) and not lean.fits(64)  # 2 query heads a KV head: up to 32 tokens a row
        caches = [prefill(model, ids, mask, width + 8, 2, min_shared=2)[0] for _ in range(2)]
        assert caches[1].layers[0].shared_columns >= 2  # the kernel reads the shared prefix once
        pos = mask.sum(-1, keepdim=True)
        first = (width - pos[:, 0]).tolist()
        tokens = torch.arange(len(PROMPTS))[:, None] + 100
        stock = model(
            input_ids=tokens,
            attention_mask=torch.cat([mask, mask.new_ones((len(PROMPTS), 1))], dim=1),
            position_ids=pos,
            past_key_values=caches[0],
            use_cache=True,
            **row_column_kwargs(model, first),
        ).logits
        got = lean(tokens, pos, caches[1], torch.tensor(first))
        assert torch.equal(got, stock)
        # three tokens a row, row b written from its own column (as prompt lookup does)
        col = torch.tensor([width + 1, width + 2, width + 1, width + 3, width + 1])
        write = col[:, None] + torch.arange(3)
        inp = torch.arange(15).reshape(5, 3) + 200
        span = int(write.max()) + 1
        cols = torch.arange(span)
        valid = torch.cat([mask.bool(), torch.ones((5, span - width), dtype=torch.bool)], dim=1)
        old = valid & (cols[None] < col[:, None])
        new = (cols[None, None] >= col[:, None, None]) & (cols[None, None] <= write[:, :, None])
        outs = []
        for cache, run_lean in zip(caches, (False, True)):
            for layer in cache.layers:
                layer.write_columns = write
            positions = pos + torch.arange(3)
            if run_lean:
                outs.append(lean(inp, positions, cache, torch.tensor(first), stop_columns=col + 1))
            else:
                outs.append(
                    model(
                        input_ids=inp,
                        attention_mask=(old[:, None, :] | new)[:, None],
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                        **row_column_kwargs(model, first, stop_columns=col + 1),
                    ).logits
                )
            for layer in cache.layers:
                layer.write_columns = None
        assert torch.equal(outs[1], outs[0])
        # the step inlines the stock norm's arithmetic: a replaced norm class keeps the stock call
        layer = model.model.layers[-1]
        stock_norm = layer.post_attention_layernorm
        layer.post_attention_layernorm = type("PatchedRMSNorm", (type(stock_norm),), {})(
            stock_norm.weight.shape[0]
        )
        assert LeanDecodeStep.for_model(model) is None
        layer.post_attention_layernorm = stock_norm
        assert LeanDecodeStep.for_model(model) is not None
        monkeypatch.setenv("SDD_LEAN_DECODE", "0")
        assert LeanDecodeStep.for_model(model) is None


def test_cpu_linears_fuse_siblings_and_restore_the_model(tiny_models, monkeypatch):
    """Inside ``CpuLinears`` the model gives the same logits through oneDNN GEMMs with fused
    q/k/v and gate/up; a sibling called on another input computes its own product; on exit
    every module has its class forward back; a model over the size limit is left alone."""
    model, tok = _load(tiny_models("llama"))
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    with torch.inference_mode():
        ref = model(**enc).logits
        with CpuLinears(model) as fast:
            assert fast.modules, "no linear layer was taken over"
            got = model(**enc).logits
            attn = model.model.layers[0].self_attn
            x = torch.randn(3, model.config.hidden_size)
            assert "forward" in attn.k_proj.__dict__
            torch.testing.assert_close(attn.k_proj(x), torch.nn.functional.linear(x, attn.k_proj.weight))
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        assert not any("forward" in m.__dict__ for m in model.modules())
        # the prepared weights are reused across calls, but not after a weight changed in place
        model.model.layers[0].self_attn.k_proj.weight.mul_(2.0)
        changed = model(**enc).logits
        with CpuLinears(model):
            torch.testing.assert_close(model(**enc).logits, changed, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(changed, ref, atol=1e-4)
        monkeypatch.setattr(cpu_linears, "CPU_LINEARS_MAX_BYTES", 0)
        with CpuLinears(model) as fast:
            assert fast.modules == []
            assert not any("forward" in m.__dict__ for m in model.modules())


def test_ngram_index_drafts_from_the_latest_earlier_occurrence():
    from sdd_plugin.generation.hf.prompt_lookup import NgramIndex

    idx = NgramIndex([1, 2, 3, 4, 1, 2, 5, 6])
    idx.extend([1, 2])
    assert idx.draft(3) == [5, 6, 1]  # bigram (1, 2): its latest earlier occurrence continues 5, 6
    idx.extend([9])
    assert idx.draft(2) == []  # 9 never occurred before
    idx.extend([4])
    assert idx.draft(2) == [1, 2]  # no (9, 4) bigram: falls back to the unigram 4


def test_common_prefix_length_on_left_padded_rows():
    pad = 0
    ids = torch.tensor(
        [
            [5, 6, 7, 8, 9, 10],
            [pad, pad, 5, 6, 7, 3],
            [pad, 5, 6, 4, 4, 4],
        ]
    )
    lengths = (ids != pad).sum(-1)
    assert common_prefix_length(ids, lengths) == 2
    # every row keeps at least one token of its own
    same = torch.tensor([[pad, 5, 6], [5, 6, 7]])
    assert common_prefix_length(same, (same != pad).sum(-1)) == 1
    differ = torch.tensor([[1, 2], [3, 4]])
    assert common_prefix_length(differ, torch.tensor([2, 2])) == 0


@pytest.mark.parametrize("lookup", [0, 3], ids=["plain", "prompt-lookup"])
def test_sampling_is_reproducible_per_generator_seed(tiny_models, lookup):
    model, tok = _load(tiny_models("llama"), attention="gqa")
    _, enc = _batch(tok, PROMPTS)
    settings = GenerationSettings(do_sample=True, temperature=1.5, top_p=0.99)

    def run(seed: int):
        gen = torch.Generator().manual_seed(seed)
        return decode_batch(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            max_new_tokens=8,
            eos_ids=[2],
            settings=settings,
            generator=gen,
            prompt_lookup=lookup,
        )

    first = run(1)
    assert run(1) == first
    assert run(2) != first
    assert all(len(row) == 8 or row[-1] == 2 for row in first)


def test_backend_engines_agree_and_bad_engine_is_named(tiny_models):
    from sdd_plugin.generation.hf.backend import HFBackend

    path = str(tiny_models("llama"))
    texts = {}
    for engine in ("decode", "generate"):
        results = []
        settings = GenerationSettings(max_new_tokens=8, batch_size=3, extra={"engine": engine})
        HFBackend().generate(path, PROMPTS, settings, results.append, show_progress=False)
        texts[engine] = {r.index: (r.text, r.num_tokens, r.finished) for r in results}
    assert sorted(texts["decode"]) == list(range(len(PROMPTS)))
    assert texts["decode"] == texts["generate"]
    with pytest.raises(ValueError, match="engine"):
        HFBackend().generate(
            path, PROMPTS, GenerationSettings(extra={"engine": "vllm"}), print, show_progress=False
        )


@pytest.mark.parametrize("lookup", [0, 3], ids=["plain", "prompt-lookup"])
def test_decode_batch_matches_generate_on_default_model(default_model, lookup):
    """The embedded default model on real distillation prompts (math template, chat-rendered):
    same greedy tokens as per-row ``generate`` with stock attention. Tiny random models are too
    flat to notice a wrong position or mask; this one is not."""
    from sdd_plugin.data.synthetic import word_problems
    from sdd_plugin.distill.stage import render_prompt
    from sdd_plugin.plugins import get_template

    stock, tok = _load(default_model)
    template = get_template("math")
    problems = word_problems(5, seed=3)
    prompts = [render_prompt(tok, *template.render(p["question"], p["answer"])) for p in problems]
    max_new = 16
    probe = _reference(stock, tok, prompts[:1], max_new, [2])
    eos_ids = sorted({2, probe[0][5]})  # a token the first row emits: rows stop at different steps
    expected = _reference(stock, tok, prompts, max_new, eos_ids)
    assert len({len(e) for e in expected}) > 1

    fast, _ = _load(default_model, attention="gqa")
    order, enc = _batch(tok, prompts)
    got = decode_batch(
        fast,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new,
        eos_ids=eos_ids,
        prompt_lookup=lookup,
    )
    assert [got[order.index(i)] for i in range(len(prompts))] == expected

"""SDD + logit distillation: the teacher's top-k log-probs from the generation pass and the NLL
meter, the KD-ready set in axolotl's layout, the recipe switch, and a real ``axolotl train``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sdd_plugin.distill.kd import require_chat_template
from sdd_plugin.generation.hf import prompt_lookup
from sdd_plugin.generation.hf.backend import HFBackend
from sdd_plugin.generation.hf.decoding import decode_batch
from sdd_plugin.generation.hf.top_logprobs import TopLogprobs
from sdd_plugin.interfaces import GenerationResult, GenerationSettings

PROMPTS = [
    "Shared system text. Question: what is two plus two?",
    "Shared system text. Question: name a colour of the sky on a clear summer day, please.",
    "Shared system text. Q: hi",
    "Shared system text. Question: a longer question that goes on for a while, with many words.",
]


def _load(path):
    from sdd_plugin.generation.hf import register_gqa_attention
    from sdd_plugin.models import load_model

    model, tok = load_model(str(path), dtype="float32")
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(register_gqa_attention())
    return model.eval(), tok


def _assert_top_k_of_plain_forward(model, prompt_ids, generated, ids, values, k):
    """``ids``/``values`` (one k-list per generated token) are the top-k of a plain, unbatched
    forward's log-softmax at the position each generated token was predicted from."""
    seq = torch.tensor([prompt_ids + generated])
    with torch.inference_mode():
        ref = torch.log_softmax(model(input_ids=seq).logits[0].float(), dim=-1)
    ref = ref[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(generated)]
    assert len(ids) == len(values) == len(generated)
    got_ids, got_values = torch.tensor(ids), torch.tensor(values)
    assert got_ids.shape == (len(generated), k)
    # the values are the reference log-probs of those ids, and the k largest ones (ties aside)
    torch.testing.assert_close(got_values, ref.gather(1, got_ids), atol=2e-4, rtol=0)
    torch.testing.assert_close(got_values, ref.topk(k, dim=-1).values, atol=2e-4, rtol=0)
    assert (got_values[:, :-1] >= got_values[:, 1:]).all(), "most probable first"


@pytest.mark.parametrize("lookup", [0, 3], ids=["plain", "prompt-lookup"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_engine_top_logprobs_equal_plain_forward_and_keep_greedy_tokens(
    tiny_models, arch, lookup, monkeypatch
):
    """The decode engine's top-k equals a plain forward's log_softmax top-k at every generated
    token (including prompt-lookup steps and rows that stop early), and asking for it leaves the
    greedy tokens unchanged. gemma3 takes the DynamicCache path."""
    monkeypatch.setattr(prompt_lookup, "LOOKUP_TOKENS_PER_STEP", 6)  # lookup takes over at 3 rows
    model, tok = _load(tiny_models(arch))
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    max_new, k = 9, 5
    plain = decode_batch(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new,
        eos_ids=[2],
        prompt_lookup=lookup,
    )
    # rows that stop at different steps: make a token two rows really emit an EOS id
    eos_ids = sorted({2, plain[0][3], plain[2][1]})
    plain = decode_batch(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new,
        eos_ids=eos_ids,
        prompt_lookup=lookup,
    )
    assert len({len(t) for t in plain}) > 1, "the test needs rows of different lengths"
    top = TopLogprobs(k, len(PROMPTS))
    got = decode_batch(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new,
        eos_ids=eos_ids,
        prompt_lookup=lookup,
        top_logprobs=top,
    )
    assert got == plain
    for r, prompt in enumerate(PROMPTS):
        ids, values = top.row(r)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        _assert_top_k_of_plain_forward(model, prompt_ids, got[r], ids, values, k)


@pytest.mark.parametrize("engine", ["decode", "generate"])
def test_backend_returns_top_logprobs_when_asked(tiny_models, engine):
    """``settings.extra["logprobs_top_k"]``: every result carries one top-k entry per counted token
    (EOS included) and the same text as without it; absent, no log-probs are returned."""
    backend = HFBackend()
    path = str(tiny_models("llama"))
    base = dict(max_new_tokens=7, batch_size=2)

    def run(extra):
        results: list[GenerationResult] = []
        backend.generate(
            path, PROMPTS, GenerationSettings(**base, extra=extra), results.append, show_progress=False
        )
        return sorted(results, key=lambda r: r.index)

    without = run({"engine": engine})
    with_top = run({"engine": engine, "logprobs_top_k": 4})
    assert [r.text for r in with_top] == [r.text for r in without]
    assert all(r.logprobs is None for r in without)
    model, tok = backend.load(path)
    for r in with_top:
        lp = r.logprobs
        assert lp is not None and len(lp.token_ids) == r.num_tokens == len(lp.top_ids) == len(lp.top_logprobs)
        assert tok.decode(lp.token_ids, skip_special_tokens=True).strip() == r.text
        prompt_ids = tok(PROMPTS[r.index], add_special_tokens=False)["input_ids"]
        _assert_top_k_of_plain_forward(model, prompt_ids, lp.token_ids, lp.top_ids, lp.top_logprobs, 4)
    with pytest.raises(ValueError, match="logprobs_top_k"):
        run({"logprobs_top_k": -1})


# ------------------------------------------------------------------------------ the stage

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Name a primary colour.", "Red is a primary colour."),
        ("What is 2 + 3?", "2 + 3 = 5."),
        ("Say hello in Spanish.", "Hola."),
        ("How many legs does a spider have?", "A spider has eight legs."),
    ]
]


def _axolotl_kd_samples(tok, kd_path):
    """Each KD row as axolotl's own KD dataset type tokenizes it (input_ids, labels, targets)."""
    from axolotl.prompt_strategies import load
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.distill.kd import AXOLOTL_KD_TYPE

    cfg = DictDefault({"sequence_len": 1024, "train_on_inputs": False, "chat_template": "tokenizer_default"})
    ds_cfg = DictDefault(
        {"type": AXOLOTL_KD_TYPE, "field_messages": "messages", "logprobs_field": "logprobs"}
    )
    strategy = load(AXOLOTL_KD_TYPE, tok, cfg, ds_cfg)
    rows = [json.loads(line) for line in kd_path.read_text().splitlines()]
    return rows, [strategy.tokenize_prompt(json.loads(json.dumps(r))) for r in rows]


def test_stage_writes_kd_set_aligned_for_axolotl(tmp_path, default_model):
    """On the default model (greedy): the KD set has one row per input row; tokenized by axolotl's
    own KD dataset type, the entry at every trained position p is the teacher's distribution of
    token p + 1 -- for an accepted rewrite its top-1 is that token (greedy), for a kept original it
    is a plain forward's top-k at p. Run again with the truncated rewrites rejected and the NLL meter
    off, the kept originals' targets come from the meter's own pass over them."""
    from sdd_plugin.distill.stage import distill_dataset
    from sdd_plugin.models import load_model

    k = 5
    kw = dict(
        teacher=default_model,
        data=CHAT_ROWS,
        format="messages",
        settings=GenerationSettings(max_new_tokens=6, batch_size=3),
        cache_dir=tmp_path / "c",
        show_progress=False,
        kd_top_k=k,
    )
    runs = {
        "accepted": distill_dataset(out=tmp_path / "a", allow_truncated=True, **kw),
        "strict": distill_dataset(out=tmp_path / "s", measure_nll=False, **kw),
    }
    # the generation (and its top-k) is cached
    assert runs["strict"].report["this_invocation"]["generated_rows"] == 0
    model, tok = load_model(str(default_model), dtype="float32")
    seen = {"rewrite": 0, "original": 0}
    for name, res in runs.items():
        kd = res.report["kd"]
        assert res.kd_path == tmp_path / name[0] / "kd.jsonl" and kd["rows"] == len(CHAT_ROWS)
        assert kd["bytes"] == res.kd_path.stat().st_size and kd["bytes_per_row"] == round(kd["bytes"] / 5, 1)
        assert kd["teacher_position_share"] > 0.5, kd
        assert "bytes/row" in (res.kd_path.parent / "distill_report.md").read_text()
        side = [json.loads(line) for line in res.rows_path.read_text().splitlines()]
        rows, samples = _axolotl_kd_samples(tok, res.kd_path)
        distilled = [json.loads(line) for line in res.output_path.read_text().splitlines()]
        for row, sample, d, s in zip(rows, samples, distilled, side):
            assert row["messages"] == d["messages"]
            ids, labels = sample["input_ids"], sample["labels"]
            targets, mask = sample["target_token_ids"], sample["target_mask"]
            assert len(targets) == len(ids) == len(mask) and all(len(t) == k for t in targets)
            trained = [p for p in range(len(ids) - 1) if mask[p][0]]
            assert trained and trained == [p for p in range(len(ids) - 1) if labels[p] != -100]
            assert all(targets[p][0] == ids[p + 1] for p in trained if s["accepted"]), name
            if not s["accepted"]:
                with torch.inference_mode():
                    ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                teacher = [p for p in trained if row["logprobs"][p - len(ids)][1] != -20.0]
                assert len(teacher) > len(trained) // 2
                for p in teacher:
                    assert targets[p] == ref[p].topk(k).indices.tolist(), (name, p)
                    raw = torch.tensor(row["logprobs"][p - len(ids)])
                    torch.testing.assert_close(raw, ref[p].topk(k).values, atol=2e-3, rtol=0)
            seen["rewrite" if s["accepted"] else "original"] += 1
    assert seen["rewrite"] and seen["original"], seen


def test_kd_cache_is_separate_resumes_and_leaves_rewrites_unchanged(tmp_path, tiny_models):
    """Asking for top-k changes no rewrite (same distilled.jsonl as without it) and has its own row
    cache; a run killed mid-way (rows.jsonl cut, last line torn) resumes to the same KD set."""
    from sdd_plugin.distill.stage import distill_dataset

    teacher = tiny_models("llama", 2)
    settings = GenerationSettings(max_new_tokens=6, batch_size=2, do_sample=True, temperature=1.0, top_p=1.0)
    kw = dict(
        teacher=teacher,
        data=CHAT_ROWS,
        format="messages",
        settings=settings,
        cache_dir=tmp_path / "c",
        show_progress=False,
        allow_truncated=True,
    )
    plain = distill_dataset(out=tmp_path / "plain", **kw)
    assert plain.kd_path is None and "kd" not in plain.report
    first = distill_dataset(out=tmp_path / "kd1", kd_top_k=3, **kw)
    assert first.report["cached_rows"] == 0 and first.report["generated_rows"] == len(CHAT_ROWS)
    assert first.output_path.read_text() == plain.output_path.read_text()
    cache = tmp_path / "c" / "distill"
    folders = sorted(p for p in cache.iterdir() if (p / "rows.jsonl").is_file())
    assert len(folders) == 2
    kd_rows = next(p / "rows.jsonl" for p in folders if "logprobs" in (p / "rows.jsonl").read_text())
    lines = kd_rows.read_text().splitlines()
    kd_rows.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # killed mid-write
    again = distill_dataset(out=tmp_path / "kd2", kd_top_k=3, **kw)
    assert 0 < again.report["this_invocation"]["generated_rows"] < len(CHAT_ROWS)
    assert again.kd_path.read_text() == first.kd_path.read_text()
    rows = [json.loads(line) for line in again.kd_path.read_text().splitlines()]
    assert all(len(row["logprobs"]) == len(row["target_token_ids"]) for row in rows)
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        require_chat_template(tok)


# ---------------------------------------------------------------------------- the recipe switch

REPO = Path(__file__).resolve().parents[1]
KD_RECIPE = REPO / "recipes" / "smollm2-135m-sdd-kd-gsm8k-cpu.yml"


def _kd_recipe(**over):
    from sdd_plugin.axolotl.recipe import load_recipe

    raw = load_recipe(KD_RECIPE)
    for key, value in over.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def test_kd_recipes_differ_from_their_sdd_recipes_only_in_the_kd_switch():
    from sdd_plugin.axolotl.recipe import load_recipe

    kd_keys = {"plugins", "sdd_kd", "sdd_kd_top_k", "kd_trainer", "kd_alpha", "kd_ce_alpha", "kd_temperature"}
    for sdd_name, kd_name, extra in (
        ("smollm2-135m-sdd-gsm8k-cpu.yml", KD_RECIPE.name, set()),
        ("llama-3.1-8b-instruct-sdd.yml", "llama-3.1-8b-instruct-sdd-kd.yml", set()),
    ):
        sdd, kd = load_recipe(REPO / "recipes" / sdd_name), load_recipe(REPO / "recipes" / kd_name)
        diff = {k for k in set(sdd) | set(kd) if sdd.get(k) != kd.get(k)}
        assert diff == kd_keys | extra | {"output_dir"}, kd_name
        assert kd["plugins"] == sdd["plugins"] + ["axolotl.integrations.kd.KDPlugin"]


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"sdd_kd_topk": 8}, "did you mean 'sdd_kd_top_k'"),
        ({"kd_alpah": 0.5}, "did you mean 'kd_alpha'"),
        ({"plugins": ["sdd_plugin.axolotl.SelfDistillationPlugin"]}, "list axolotl.integrations.kd.KDPlugin"),
        ({"kd_trainer": None}, "set kd_trainer: true"),
        ({"kd_alpha": None}, "set kd_alpha"),
        ({"kd_ce_alpha": 1.5}, "kd_ce_alpha: must be a number in [0, 1]"),
        ({"kd_temperature": 0}, "kd_temperature: must be a number > 0"),
        ({"chat_template": "chatml"}, "tokenizer's own chat template"),
        ({"sdd_distill": False}, "sdd_kd: needs sdd_distill: true"),
        ({"sdd_kd": False}, "only sdd_kd: true writes"),
        ({"sdd_kd_top_k": 0}, "sdd_kd_top_k"),
    ],
)
def test_check_rejects_a_bad_kd_combination(over, needle):
    from sdd_plugin.axolotl.recipe import plan

    assert plan(_kd_recipe(), resolve=False)["problems"] == []
    problems = plan(_kd_recipe(**over), resolve=False)["problems"]
    assert any(needle in p for p in problems), problems


def test_check_rejects_a_non_chat_dataset_for_kd():
    from sdd_plugin.axolotl.recipe import plan

    raw = _kd_recipe()
    raw["datasets"] = [{"path": "data.jsonl", "type": "alpaca"}]
    assert any("sdd_kd needs type: chat_template" in p for p in plan(raw, resolve=False)["problems"])


def test_sdd_check_and_register_fail_loudly_on_kd_problems(capsys, tmp_path, default_model):
    import yaml
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.axolotl import SelfDistillationPlugin
    from sdd_plugin.axolotl.args import RecipeKeyError
    from sdd_plugin.cli import main

    path = tmp_path / "kd.yml"
    path.write_text(yaml.safe_dump(_kd_recipe(kd_alpah=0.5)))
    assert main(["check", str(path), "--no-axolotl"]) == 1
    out = capsys.readouterr().out
    assert "kd          on: top-20 teacher log-probs" in out and "did you mean 'kd_alpha'" in out
    raw = _kd_recipe(base_model=str(tmp_path / "no-such-model"), kd_ce_alpha=None)
    with pytest.raises(RecipeKeyError, match="set kd_ce_alpha"):  # before any model is looked at
        SelfDistillationPlugin().register(DictDefault(raw))


# ------------------------------------------------------------------- real axolotl train (slow)


@pytest.mark.slow
def test_sdd_kd_recipe_trains_with_axolotls_kd_trainer_on_cpu(tmp_path, default_model):
    """``axolotl train`` on the SDD + KD CPU recipe (small limits): the plugin distils with top-k,
    points the dataset at the KD set, axolotl tokenizes it with its KD type and trains with its KD
    trainer (loss logged each step), and the adapter loads onto the pruned model."""
    import yaml
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bin_dir = Path(sys.executable).parent
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(default_model.parent, target_is_directory=True)
    raw = yaml.safe_load(KD_RECIPE.read_text())
    raw.update(
        max_steps=2,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        sdd_prune_calibration_limit=8,
        sdd_distill_max_new_tokens=96,
        sdd_distill_batch_size=6,
        sdd_distill_limit=6,
        sdd_distill_measure_nll=False,
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
    )
    raw["datasets"][0]["path"] = "sdd://wordproblems?n=16&seed=0"
    recipe = tmp_path / "kd.yml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",  # axolotl launches `accelerate`
        AXOLOTL_DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        SDD_CACHE_DIR=str(cache),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    proc = subprocess.run(
        [str(bin_dir / "axolotl"), "train", str(recipe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # the KD trainer trained, a loss line per step
    assert "SDD + KD: AxolotlKDTrainer trains on the teacher's top-20 log-probs" in log
    losses = [float(x) for x in re.findall(r"'loss': '?([0-9.eE+-]+)'?", log)]
    assert len(losses) == 2 and all(0 < x < 50 for x in losses), losses

    # the dataset axolotl trained on is the KD set, tokenized by its KD type
    out = tmp_path / "out"
    (ds_info,) = json.loads((out / "sdd_run.json").read_text())["distill"]["datasets"]
    kd = ds_info["report"]["kd"]
    assert kd["rows"] == 6 and kd["bytes_per_row"] > 0 and kd["path"].endswith("kd.jsonl")
    (prepared,) = [p for p in (tmp_path / "prepared").iterdir() if p.is_dir()]
    ds = load_from_disk(str(prepared))
    assert {"target_logprobs", "target_token_ids", "target_mask"} <= set(ds.column_names)
    assert len(ds[0]["target_token_ids"]) == len(ds[0]["input_ids"])

    # the adapter loads onto the pruned model it was trained on and runs
    adapter = json.loads((out / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ds[0]["input_ids"]])).logits
    assert torch.isfinite(logits).all() and base.config.num_hidden_layers == 24

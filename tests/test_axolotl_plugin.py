"""Fast tests of the Axolotl plugin: recipe keys, typo detection, data URIs, register(), `sdd check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sdd_plugin.axolotl.args import KNOWN_KEYS, RecipeKeyError, key_table, parse_sdd_args
from sdd_plugin.axolotl.recipe import (
    PLUGIN_PATH,
    dataset_format,
    distilled_path,
    load_recipe,
    plan,
    resolve_data_uri,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
CPU_RECIPE = RECIPES / "smollm2-135m-sdd-gsm8k-cpu.yml"
SFT_RECIPE = RECIPES / "smollm2-135m-sft-gsm8k-cpu.yml"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private SDD cache (pruned models, data) for one test; converted models are shared."""
    from sdd_plugin.cache import cache_dir

    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "cache"
    root.mkdir()
    (root / "models").symlink_to(models, target_is_directory=True)
    monkeypatch.setenv("SDD_CACHE_DIR", str(root))
    return root


def _recipe(**over):
    raw = load_recipe(CPU_RECIPE)
    raw.update(over)
    return raw


# ------------------------------------------------------------------------------------- args


def test_no_key_is_required_and_every_key_is_listed():
    parse_sdd_args({})  # listing the plugin alone is a valid recipe: every key has a valid default
    keys = {row[0] for row in key_table()}
    assert keys == KNOWN_KEYS - {"sdd_pruned_from"}
    assert all(k.startswith("sdd_") for k in KNOWN_KEYS)


def test_misspelled_key_is_rejected_with_a_suggestion():
    with pytest.raises(RecipeKeyError, match=r"'sdd_prune_num_block'.*did you mean 'sdd_prune_num_blocks'"):
        parse_sdd_args({"sdd_prune_num_block": 6})
    with pytest.raises(RecipeKeyError, match="sdd_distil_template.*sdd_distill_template"):
        parse_sdd_args({"sdd_distil_template": "math", "learning_rate": 1e-4})
    # keys of other tools are not ours to judge
    assert parse_sdd_args({"lora_r": 8, "sd_model": "x"}).sdd_prune


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("sdd_prune_metric", "cosine", "unknown metric 'cosine'; registered: angular"),
        ("sdd_distill_template", "nope", "unknown template 'nope'"),
        ("sdd_distill_checker", "nope", "unknown checker 'nope'"),
        ("sdd_distill_backend", "vllm2", "unknown backend 'vllm2'"),
        ("sdd_prune_num_blocks", 0, "greater than or equal to 1"),
        ("sdd_prune_start", -1, "greater than or equal to 0"),
        ("sdd_distill_temperature", 0, "greater than 0"),
        ("sdd_distill_top_p", 1.5, "less than or equal to 1"),
        ("sdd_distill_batch_size", "lots", "valid integer"),
        ("sdd_prune", "maybe", "valid boolean"),
        ("sdd_distill_dtype", "int8", "'float32', 'bfloat16' or 'float16'"),
    ],
)
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(RecipeKeyError) as err:
        parse_sdd_args({key: value})
    assert key in str(err.value) and needle in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(RecipeKeyError) as err:
        parse_sdd_args({"sdd_prune_num_block": 6, "sdd_prune_metric": "nope"})
    assert "sdd_prune_num_block'" in str(err.value) and "sdd_prune_metric" in str(err.value)


# --------------------------------------------------------------------------------- data URIs


def test_data_uri_layout_follows_the_axolotl_type(cache):
    chat = resolve_data_uri("sdd://wordproblems?n=5&seed=1", "chat_template")
    rows = [json.loads(line) for line in chat.read_text().splitlines()]
    assert len(rows) == 5
    turns = rows[0]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert "####" in turns[1]["content"] and "<<" not in turns[1]["content"]  # calculator notes stripped
    alpaca = resolve_data_uri("sdd://wordproblems?n=5&seed=1", "alpaca")
    assert set(json.loads(alpaca.read_text().splitlines()[0])) == {"instruction", "input", "output"}
    raw = resolve_data_uri("sdd://wordproblems?n=5&seed=1&layout=gsm8k", "chat_template")
    assert set(json.loads(raw.read_text().splitlines()[0])) == {"question", "answer"}
    # same parameters -> same file; the question text matches across layouts
    assert resolve_data_uri("sdd://wordproblems?n=5&seed=1", "chat_template") == chat
    assert json.loads(raw.read_text().splitlines()[0])["question"] == turns[0]["content"]
    assert str(chat).startswith(str(cache))


@pytest.mark.parametrize(
    "uri,needle",
    [
        ("sdd://poems?n=3", "unknown sdd:// data set 'poems'"),
        ("sdd://wordproblems?rows=3", "unknown parameter"),
        ("sdd://wordproblems?n=zero", "n must be an integer"),
        ("sdd://wordproblems?n=0", "n must be positive"),
        ("sdd://wordproblems?split=dev", "split must be train or test"),
        ("sdd://wordproblems?layout=csv", "layout must be one of"),
        ("sdd://convert?source=x.jsonl", "convert needs source=... and format=..."),
        ("sdd://convert?source=x.jsonl&format=poetry", "unknown dataset format 'poetry'"),
        ("sdd://convert?source=/no/such.jsonl&format=gsm8k", "does not exist"),
        ("sdd://convert?source=x.jsonl&format=gsm8k&layout=gsm8k", "layout must be one of messages, alpaca"),
    ],
)
def test_bad_data_uri(cache, uri, needle):
    with pytest.raises((ValueError, FileNotFoundError), match=needle):
        resolve_data_uri(uri, "chat_template")


def test_convert_uri_lays_out_a_gsm8k_file(cache, tmp_path):
    """sdd://convert on a generated GSM8K-style file (no data folder needed)."""
    from sdd_plugin.data.synthetic import word_problems, write_jsonl

    rows = word_problems(5, seed=2)
    source = write_jsonl(rows, tmp_path / "gsm.jsonl")
    out = resolve_data_uri(f"sdd://convert?source={source}&format=gsm8k&n=3", "chat_template")
    converted = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(converted) == 3
    for row, conv in zip(rows, converted):
        user, assistant = conv["messages"]
        assert user == {"role": "user", "content": row["question"]} and assistant["role"] == "assistant"
        final = row["answer"].rsplit("####", 1)[1].strip()
        assert assistant["content"].endswith(f"#### {final}") and "<<" not in assistant["content"]
    assert str(out).startswith(str(cache))


def test_convert_uri_reads_gsm8k_and_dolly_files(cache, tmp_path, shared_data):
    gsm = resolve_data_uri(
        f"sdd://convert?source={shared_data}/gsm8k/train.jsonl&format=gsm8k&n=3", "chat_template"
    )
    rows = [json.loads(line) for line in gsm.read_text().splitlines()]
    assert len(rows) == 3
    user, assistant = rows[0]["messages"]
    assert user["role"] == "user" and user["content"].startswith("Natalia sold clips")
    assert assistant["content"].endswith("#### 72") and "<<" not in assistant["content"]
    dolly = next((shared_data / "dolly").glob("*.jsonl.gz"))
    out = resolve_data_uri(f"sdd://convert?source={dolly}&format=dolly&n=4", "alpaca")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"instruction", "input", "output"} and rows[0]["output"]


# ------------------------------------------------------------------------------ dataset formats


def test_dataset_format_mapping():
    assert dataset_format({"path": "x.jsonl", "type": "chat_template"}, 0) == "messages"
    assert dataset_format({"path": "x.json", "type": "alpaca"}, 0) == "alpaca"
    with pytest.raises(ValueError, match=r"datasets\[2\].*completion.*sdd_distill: false"):
        dataset_format({"path": "x.jsonl", "type": "completion"}, 2)
    with pytest.raises(ValueError, match=r"datasets\[1\].*name is not supported.*sdd://convert"):
        dataset_format({"path": "openai/gsm8k", "name": "main", "type": "alpaca"}, 1)
    normalized = {"role": "role", "content": "content"}  # what axolotl's config normalization adds
    entry = {"path": "x", "type": "chat_template", "message_property_mappings": normalized}
    assert dataset_format(entry, 0) == "messages"
    with pytest.raises(ValueError, match="message_property_mappings"):
        dataset_format({**entry, "message_property_mappings": {"role": "from", "content": "value"}}, 0)
    with pytest.raises(ValueError, match=r"datasets\[0\].*field_messages"):
        dataset_format({"path": "x.jsonl", "type": "chat_template", "field_messages": "conversation"}, 0)


def test_distilled_path_is_content_hashed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    entry = {"path": str(data), "type": "chat_template"}
    args = parse_sdd_args({})
    p1 = distilled_path(entry, "teacher", "messages", args, root=tmp_path)
    assert p1 == distilled_path(entry, "teacher", "messages", args, root=tmp_path)
    assert p1.parent.name.startswith("d-messages-") and p1.name == "distilled.jsonl"
    other = {
        distilled_path(entry, "teacher2", "messages", args, root=tmp_path),
        distilled_path(
            entry, "teacher", "messages", parse_sdd_args({"sdd_distill_max_new_tokens": 9}), root=tmp_path
        ),
        distilled_path(
            entry, "teacher", "messages", parse_sdd_args({"sdd_distill_template": "math"}), root=tmp_path
        ),
    }
    data.write_text('{"messages": [1]}\n')  # new content, same path
    other.add(distilled_path(entry, "teacher", "messages", args, root=tmp_path))
    assert p1 not in other and len(other) == 4


def test_incomplete_checkpoints_are_dropped_before_auto_resume(tmp_path):
    from sdd_plugin.checkpoints import drop_incomplete_checkpoints

    for n, complete in ((10, True), (20, True), (30, False)):
        ckpt = tmp_path / f"checkpoint-{n}"
        ckpt.mkdir()
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    assert drop_incomplete_checkpoints(tmp_path) == [tmp_path / "checkpoint-30"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20"]
    assert drop_incomplete_checkpoints(tmp_path / "missing") == []
    assert drop_incomplete_checkpoints(None) == []


def test_bf16_on_a_cpu_only_machine_sets_use_cpu():
    import torch

    from sdd_plugin.axolotl.plugin import SelfDistillationPlugin

    plugin = SelfDistillationPlugin()
    assert not torch.cuda.is_available()  # this machine (and CI) is CPU-only
    assert plugin.get_training_args({"bf16": True}) == {"use_cpu": True}
    assert plugin.get_training_args({"bfloat16": True}) == {"use_cpu": True}
    # fp32, and bf16: auto (which axolotl resolves to off without a GPU), leave training args alone
    assert plugin.get_training_args({"bf16": False}) is None
    assert plugin.get_training_args({"bf16": "auto"}) is None


# --------------------------------------------------------------------------------- recipes


def test_sft_twin_differs_only_in_the_switch():
    sdd, sft = load_recipe(CPU_RECIPE), load_recipe(SFT_RECIPE)
    assert sdd["sdd_distill"] is True and sft["sdd_distill"] is False
    diff = {k for k in set(sdd) | set(sft) if sdd.get(k) != sft.get(k)}
    assert diff == {"sdd_distill", "output_dir"}


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yml")))
def test_every_recipe_is_valid(name):
    raw = load_recipe(RECIPES / name)
    assert PLUGIN_PATH in raw["plugins"]
    result = plan(raw, resolve=False)  # no model/data resolution: hub ids and ../shared are fine
    assert result["problems"] == [], result["problems"]
    assert all(d.get("format") for d in result["datasets"]) or raw["sdd_distill"] is False
    if "cpu" in name:
        for key in ("bf16", "fp16", "sample_packing", "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"):
            assert raw[key] is False, key


def test_llama_recipe_is_the_papers_setting():
    raw = load_recipe(RECIPES / "llama-3.1-8b-instruct-sdd.yml")
    assert raw["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert raw["sdd_prune_num_blocks"] == 6 and raw["adapter"] == "lora"
    assert raw["bf16"] is True and raw["flash_attention"] is True


def test_recipes_readme_lists_every_recipe():
    text = (RECIPES / "README.md").read_text()
    for p in RECIPES.glob("*.yml"):
        assert p.name in text, p.name


def test_plugin_readme_documents_every_key():
    text = (REPO / "sdd_plugin" / "axolotl" / "README.md").read_text()
    for key, default, _ in key_table():
        assert f"| `{key}` | `{default}` |" in text, key
    assert PLUGIN_PATH in text


# ---------------------------------------------------------------------------- axolotl side


def test_args_merge_into_axolotls_config_schema(tiny_models):
    """Axolotl validates our keys with the rest of the recipe (get_input_args)."""
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.axolotl import SelfDistillationPlugin, _axolotl_validate

    assert SelfDistillationPlugin().get_input_args() == "sdd_plugin.axolotl.args.SDDArgs"
    PluginManager.get_instance().register(PLUGIN_PATH)
    raw = _recipe(base_model=str(tiny_models("llama", 4)), sdd_prune_num_blocks=2)
    raw["datasets"] = [{"path": "x.jsonl", "type": "chat_template"}]
    from axolotl.cli.config import gpu_capabilities
    from axolotl.utils.config import validate_config

    caps, env = gpu_capabilities()
    cfg = validate_config(DictDefault(raw), capabilities=caps, env_capabilities=env)
    assert cfg.sdd_prune_num_blocks == 2 and cfg.sdd_distill_template == "math"
    default = parse_sdd_args({}).sdd_distill_top_p
    assert "sdd_distill_top_p" not in raw and default is not None
    assert cfg.sdd_distill_top_p == default  # an unset key gets our default in axolotl's cfg
    raw["sdd_prune_metric"] = "cosine"
    with pytest.raises(Exception, match="unknown metric 'cosine'"):
        _axolotl_validate(DictDefault(raw))


def test_register_rejects_typos_before_loading_anything(tmp_path):
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.axolotl import SelfDistillationPlugin

    raw = _recipe(base_model=str(tmp_path / "no-such-model"), sdd_prune_num_bloks=4)
    with pytest.raises(RecipeKeyError, match="did you mean 'sdd_prune_num_blocks'"):
        SelfDistillationPlugin().register(DictDefault(raw))


def test_axolotl_config_loading_fails_loudly_on_a_typo(tmp_path):
    """Through axolotl's own recipe loader (what `axolotl train/preprocess/merge-lora` call)."""
    from axolotl.cli.config import load_cfg

    raw = _recipe(sdd_prune_numblocks=4, output_dir=str(tmp_path / "out"))
    path = tmp_path / "typo.yml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeKeyError, match="'sdd_prune_numblocks'; did you mean 'sdd_prune_num_blocks'"):
        load_cfg(str(path))
    assert not (tmp_path / "out").exists()


def test_register_prunes_and_points_base_model_at_the_pruned_checkpoint(tiny_models, cache):
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.axolotl import SelfDistillationPlugin
    from sdd_plugin.axolotl.recipe import num_layers

    base = str(tiny_models("llama", 6))
    raw = _recipe(base_model=base, sdd_prune_num_blocks=2, sdd_prune_calibration_limit=4)
    raw["datasets"] = [{"path": "sdd://wordproblems?n=4", "type": "chat_template"}]
    cfg = DictDefault(raw)
    plugin = SelfDistillationPlugin()
    plugin.register(cfg)
    pruned = Path(cfg.base_model)
    assert pruned != Path(base) and str(pruned).startswith(str(cache))
    assert num_layers(pruned) == 4 and num_layers(base) == 6
    assert cfg.sdd_pruned_from == base and cfg.sdd_teacher == base  # the teacher stays unpruned
    assert Path(cfg.datasets[0].path).is_file()  # sdd:// resolved to a local jsonl
    assert plugin.prune_info["reused"] is False and len(plugin.prune_info["removed_blocks"]) == 2

    # a cfg that was prepared already (ray workers register again) is left as it is
    worker = SelfDistillationPlugin()
    worker.register(cfg)
    assert (
        cfg.base_model == str(pruned)
        and worker.prune_info["removed_blocks"] == plugin.prune_info["removed_blocks"]
    )

    again = SelfDistillationPlugin()
    cfg2 = DictDefault(_recipe(base_model=base, sdd_prune_num_blocks=2, sdd_prune_calibration_limit=4))
    again.register(cfg2)
    assert cfg2.base_model == str(pruned) and again.prune_info["reused"] is True

    # an explicit start block overrides the metric
    cfg3 = DictDefault(
        _recipe(base_model=base, sdd_prune_num_blocks=2, sdd_prune_start=1, sdd_prune_calibration_limit=4)
    )
    third = SelfDistillationPlugin()
    third.register(cfg3)
    assert third.prune_info["removed_blocks"] == [1, 2]

    # merge-lora (or any run loading an adapter) uses the pruned model the adapter was trained on,
    # even when today's settings would prune other blocks
    adapter = cache.parent / "run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(pruned)}))
    merge = DictDefault(
        _recipe(
            base_model=base,
            sdd_prune_num_blocks=2,
            sdd_prune_start=0,
            output_dir=str(adapter),
            merge_lora=True,
        )
    )
    merging = SelfDistillationPlugin()
    merging.register(merge)
    assert merge.base_model == str(pruned) and merging.prune_info["from_adapter"] == str(adapter)
    assert merging.prune_info["removed_blocks"] == plugin.prune_info["removed_blocks"]

    # out of range for a 6-block model: named, before any weights load
    with pytest.raises(ValueError, match="sdd_prune_num_blocks: 6 must be smaller than the model's 6 blocks"):
        SelfDistillationPlugin().register(DictDefault(_recipe(base_model=base, sdd_prune_num_blocks=6)))
    with pytest.raises(ValueError, match="sdd_prune_start: 5"):
        SelfDistillationPlugin().register(
            DictDefault(_recipe(base_model=base, sdd_prune_num_blocks=2, sdd_prune_start=5))
        )


def test_register_without_pruning_resolves_the_embedded_name(default_model, cache):
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.axolotl import SelfDistillationPlugin

    cfg = DictDefault(_recipe(sdd_prune=False))
    assert cfg.base_model == "smollm2-135m-instruct"
    SelfDistillationPlugin().register(cfg)
    assert Path(cfg.base_model).resolve() == default_model.resolve()
    assert cfg.sdd_teacher == cfg.base_model
    assert cfg.sdd_pruned_from is None


# ------------------------------------------------------------------------------- sdd check


def _write(tmp_path, raw, name="recipe.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def _check(capsys, *argv):
    from sdd_plugin.cli import main

    code = main(["check", *argv])
    return code, capsys.readouterr().out


def test_check_passes_the_cpu_recipe(capsys, default_model, cache):
    code, out = _check(capsys, str(CPU_RECIPE))
    assert code == 0, out
    assert "OK: the recipe would run" in out
    assert f"{PLUGIN_PATH}: ok" in out
    assert "(30 blocks)" in out and "blocks 30 -> 24" in out
    assert "unpruned base_model" in out and "format messages" in out


def test_check_accepts_bf16_on_cpu_and_warns_about_auto(capsys, tmp_path, default_model, cache):
    raw = load_recipe(CPU_RECIPE)
    for value, warned in ((True, False), ("auto", True)):
        path = tmp_path / f"bf16-{value}.yml"
        path.write_text(yaml.safe_dump({**raw, "bf16": value}))
        code, out = _check(capsys, str(path))
        assert code == 0, out
        assert ("set bf16: false" in out) is warned, out


def test_check_catches_a_typo(capsys, tmp_path, default_model, cache):
    raw = _recipe(sdd_distil_limit=8)
    code, out = _check(capsys, _write(tmp_path, raw), "--no-axolotl")
    assert code == 1
    assert "'sdd_distil_limit'" in out and "did you mean 'sdd_distill_limit'" in out


def test_check_catches_a_plugin_that_would_not_import(capsys, tmp_path, default_model, cache):
    raw = _recipe(plugins=["sdd_plugin.axolotl.SelfDistilationPlugin", "no_such_pkg.Plugin"])
    code, out = _check(capsys, _write(tmp_path, raw), "--no-axolotl")
    assert code == 1
    assert "SelfDistilationPlugin would not load" in out and "has no attribute" in out
    assert "no_such_pkg.Plugin would not load" in out
    assert f"{PLUGIN_PATH} is not listed, so axolotl would silently drop" in out


def test_check_catches_bad_data_and_model(capsys, tmp_path, cache):
    raw = _recipe(base_model=str(tmp_path / "missing-model"))
    raw["datasets"] = [
        {"path": str(tmp_path / "missing.jsonl"), "type": "chat_template"},
        {"path": "x.jsonl", "type": "completion"},
    ]
    code, out = _check(capsys, _write(tmp_path, raw), "--no-axolotl")
    assert code == 1
    assert "base_model:" in out and "missing.jsonl does not exist" in out
    assert "cannot self-distill axolotl dataset type 'completion'" in out


def test_check_runs_axolotls_validation(capsys, tmp_path, default_model, cache):
    raw = _recipe(micro_batch_size="two")
    code, out = _check(capsys, _write(tmp_path, raw))
    assert code == 1 and "axolotl config validation" in out and "micro_batch_size" in out


def test_check_missing_recipe_is_a_user_error(capsys, tmp_path):
    from sdd_plugin.cli import main

    assert main(["check", str(tmp_path / "nope.yml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_args_import_without_axolotl():
    """The recipe keys and helpers must not import axolotl (sdd check reads them first)."""
    import subprocess
    import sys

    code = "import sys, sdd_plugin.axolotl.args, sdd_plugin.axolotl.recipe; print('axolotl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""End to end: the real ``axolotl train`` on recipes/smollm2-135m-sdd-gsm8k-cpu.yml (small limits).

Checks that axolotl trains the *pruned* model (24 of 30 blocks) with a LoRA adapter, that the
examples it tokenized are the teacher's accepted rewrites (not the originals), that a rerun
reuses the pruned model and the distilled data, and that the SFT twin tokenizes the originals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = {
    "max_steps": 1,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "sequence_len": 384,
    "sdd_prune_calibration_limit": 8,
    "sdd_distill_max_new_tokens": 96,
    "sdd_distill_batch_size": 8,
    "sdd_distill_limit": 6,
    "sdd_distill_measure_nll": False,
}
DATA = "sdd://wordproblems?n=16&seed=0"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, default_model):
    """A work folder with a private SDD cache (the converted default model is shared) and env."""
    root = tmp_path_factory.mktemp("axolotl")
    cache = root / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(default_model.parent, target_is_directory=True)
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # axolotl launches `accelerate`
        AXOLOTL_DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        SDD_CACHE_DIR=str(cache),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return root, env


def _recipe(root: Path, name: str, src: str) -> Path:
    raw = yaml.safe_load((REPO / "recipes" / src).read_text())
    raw.update(SMALL, output_dir=str(root / name), dataset_prepared_path=str(root / f"prepared-{name}"))
    raw["datasets"][0]["path"] = DATA
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _axolotl(command: str, recipe: Path, env: dict) -> str:
    proc = subprocess.run(
        [str(BIN / "axolotl"), command, str(recipe)],
        cwd=recipe.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _trained_texts(prepared_root: Path, tokenizer_dir: str) -> list[str]:
    """Decode the tokens axolotl trains on (labels != -100) from its prepared dataset."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    folders = [p for p in prepared_root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    ds = load_from_disk(str(folders[0]))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [tok.decode([t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100]) for r in ds]


def _jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_sdd_recipe_trains_the_pruned_model_on_distilled_data_and_reuses_caches(workdir):
    from sdd_plugin.axolotl.recipe import num_layers

    root, env = workdir
    recipe = _recipe(root, "sdd", "smollm2-135m-sdd-gsm8k-cpu.yml")
    log = _axolotl("train", recipe, env)
    out = root / "sdd"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    manifest = json.loads((out / "sdd_run.json").read_text())
    prune, distill = manifest["prune"], manifest["distill"]

    # axolotl trained the pruned model; the teacher stayed the unpruned one
    pruned = prune["model"]
    assert prune["enabled"] and not prune["reused"] and len(prune["removed_blocks"]) == 6
    assert num_layers(pruned) == 24 and num_layers(manifest["teacher"]) == 30
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 24
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == pruned
    assert "training the pruned model (24 blocks" in log

    # the examples axolotl tokenized are the distilled ones
    (ds,) = distill["datasets"]
    assert distill["enabled"] and not ds["reused"] and ds["format"] == "messages"
    distilled = _jsonl(ds["path"])
    original = _jsonl(ds["source"])
    side = _jsonl(Path(ds["path"]).parent / "rows.jsonl")
    assert len(distilled) == 6 and len(side) == 6  # sdd_distill_limit
    accepted = [s["index"] for s in side if s["accepted"]]
    assert accepted, "no teacher rewrite was accepted; nothing to check"
    texts = _trained_texts(root / "prepared-sdd", pruned)
    assert len(texts) == 6
    for i in accepted:
        new = distilled[i]["messages"][-1]["content"].strip()
        old = original[i]["messages"][-1]["content"].strip()
        assert new != old
        assert any(new in t for t in texts), new
        assert not any(old in t for t in texts), old
    for s in side:  # rejected rewrites fell back to the original response
        if not s["accepted"]:
            old = original[s["index"]]["messages"][-1]["content"].strip()
            assert any(old in t for t in texts)

    # rerun: the pruned model and the distilled data come from the cache, untouched
    weights = next(Path(pruned).glob("*.safetensors"))
    stamps = (weights.stat().st_mtime_ns, Path(ds["path"]).stat().st_mtime_ns)
    _axolotl("train", recipe, env)
    again = json.loads((out / "sdd_run.json").read_text())
    assert again["runs"] == 2
    assert again["prune"]["reused"] is True and again["prune"]["model"] == pruned
    assert [d["reused"] for d in again["distill"]["datasets"]] == [True]
    assert again["distill"]["datasets"][0]["path"] == ds["path"]
    assert (weights.stat().st_mtime_ns, Path(ds["path"]).stat().st_mtime_ns) == stamps


def test_sft_twin_tokenizes_the_original_responses(workdir):
    root, env = workdir
    recipe = _recipe(root, "sft", "smollm2-135m-sft-gsm8k-cpu.yml")
    _axolotl("preprocess", recipe, env)
    manifest = json.loads((root / "sft" / "sdd_run.json").read_text())
    assert manifest["distill"]["enabled"] is False and manifest["prune"]["enabled"] is True
    (data,) = (root / "cache" / "axolotl-data").glob("wordproblems-train-n16-*-messages-*.jsonl")
    original = _jsonl(data)
    texts = _trained_texts(root / "prepared-sft", manifest["base_model"])
    assert len(texts) == len(original) == 16  # no limit without distillation
    for row in original:
        assert any(row["messages"][-1]["content"].strip() in t for t in texts)


def test_training_resumes_from_its_last_complete_checkpoint_after_sigkill(workdir):
    """A checkpoint every step, SIGKILL after the first one, a checkpoint cut off mid-save, and a
    rerun that resumes and finishes -- in bf16 on a CPU-only machine (the plugin sets ``use_cpu``)
    where the CPU has native bf16, in fp32 elsewhere (emulated bf16 is ~100x slower)."""
    import signal
    import time

    from sdd_plugin.models import fast_dtype_available

    bf16 = fast_dtype_available("bfloat16")
    root, env = workdir
    recipe = _recipe(root, "resume", "smollm2-135m-sft-gsm8k-cpu.yml")
    raw = yaml.safe_load(recipe.read_text())
    raw.update(
        max_steps=4,
        bf16=bf16,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
        auto_resume_from_checkpoints=True,
        logging_steps=1,
    )
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = root / "resume"
    logf = root / "resume-first.log"
    with open(logf, "w") as f:
        proc = subprocess.Popen(
            [str(BIN / "axolotl"), "train", str(recipe)],
            cwd=root,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(1800):  # polls every 0.5 s: a hang guard of ~15 min, not a timing check
            if list(out.glob("checkpoint-*/trainer_state.json")):
                break
            assert proc.poll() is None, logf.read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("axolotl wrote no complete checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = logf.read_text()
    assert ("use_cpu=True" in first) == bf16  # bf16 autocast on CPU, through the plugin
    assert not (out / "adapter_model.safetensors").exists()  # really stopped before the end
    done = max(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert 1 <= done < 4
    # a later checkpoint that the kill cut off mid-save (no trainer_state.json) must not be used
    broken = out / "checkpoint-99"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")

    log = _axolotl("train", recipe, env)
    assert not broken.exists() and "cut off mid-save" in log
    assert f"checkpoint-{done}" in log  # auto-resume picked the last complete checkpoint
    assert (out / "adapter_model.safetensors").is_file()
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    # the rerun trained only the steps after the checkpoint (one loss line per step)
    assert log.count("{'loss':") == 4 - done, log[-3000:]


def test_stopping_the_benchmark_stops_its_trainer(workdir, tmp_path):
    """SIGTERM to a process running ``bench.axolotl_train`` takes down the whole ``axolotl train``
    tree (it re-launches itself through ``accelerate``): no trainer is left writing checkpoints
    into a stage folder that the next run reuses."""
    import signal
    import time

    import psutil

    root, env = workdir
    recipe = yaml.safe_load(_recipe(root, "sigterm", "smollm2-135m-sft-gsm8k-cpu.yml").read_text())
    code = (
        "import sys, yaml; from pathlib import Path; from sdd_plugin.bench import axolotl_train; "
        "axolotl_train(yaml.safe_load(open(sys.argv[1])), Path(sys.argv[2]))"
    )
    spec = tmp_path / "recipe.yml"
    spec.write_text(yaml.safe_dump(recipe))
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec), str(tmp_path)], env=env)
    parent = psutil.Process(proc.pid)
    trainers: list[psutil.Process] = []
    for _ in range(600):  # polls every 0.5 s until the accelerate-launched trainer exists
        trainers = [
            c for c in parent.children(recursive=True) if "axolotl.cli.train" in " ".join(c.cmdline())
        ]
        if trainers:
            break
        assert proc.poll() is None
        time.sleep(0.5)
    else:
        pytest.fail("axolotl train never started")
    tree = parent.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    gone, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, [p.cmdline() for p in alive]

"""The Axolotl plugin in a multi-process job: every rank of ``axolotl train`` registers the plugin.

- Two real processes run the plugin's ``register`` + ``load_datasets`` on one recipe at the same
  moment (shared cache, as ranks on one node or on a shared file system): one prunes and distils,
  the other waits and reuses; both end with the same model and dataset paths.
- Prune and distil first (``sdd prune`` + ``sdd distill``), copy the outputs to a "node" where the
  unpruned model is not, point the recipe at them: no rank prunes or distils, ``sdd check`` says so,
  and a dataset still to distil without a teacher on the node is a clear error.
- (slow) A real ``axolotl train`` with 2 processes on CPU (``accelerate launch --multi_gpu
  --num_processes 2`` with ``ACCELERATE_USE_CPU``: gloo), on a tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sdd_plugin.axolotl.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CPU_RECIPE = REPO / "recipes" / "smollm2-135m-sdd-gsm8k-cpu.yml"
SMALL = {
    "sdd_prune_num_blocks": 2,
    "sdd_prune_calibration_limit": 4,
    "sdd_distill_max_new_tokens": 8,
    "sdd_distill_batch_size": 4,
    "sdd_distill_limit": 4,
    "sdd_distill_measure_nll": False,
}

#: One rank: wait for the start signal, then what ``axolotl train`` does with the plugin before the
#: model loads (register, then load_datasets); the outcome goes to a JSON file.
RANK = """
import json, sys, time
from pathlib import Path
import yaml
from axolotl.utils.dict import DictDefault
from sdd_plugin.axolotl import SelfDistillationPlugin

recipe, out, sync, rank = sys.argv[1:5]
cfg = DictDefault(yaml.safe_load(Path(recipe).read_text()))
Path(sync, f"ready-{rank}").touch()
while not Path(sync, "go").exists():
    time.sleep(0.02)
plugin = SelfDistillationPlugin()
plugin.register(cfg)
plugin.load_datasets(cfg)
result = {
    "base_model": cfg.base_model,
    "datasets": [d["path"] for d in cfg.datasets],
    "prune": plugin.prune_info,
    "distill": plugin.distill_info,
}
Path(out).write_text(json.dumps(result, default=str))
"""


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        SDD_CACHE_DIR=str(cache),
        AXOLOTL_DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


def _recipe(path: Path, **over) -> Path:
    raw = load_recipe(CPU_RECIPE)
    raw.update(SMALL)
    raw.update(over)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _ranks(recipe: Path, cache: Path, work: Path, n: int = 2) -> list[dict]:
    """Run ``n`` ranks of :data:`RANK` at once; their results."""
    sync = work / "sync"
    sync.mkdir(parents=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(recipe), str(work / f"rank{r}.json"), str(sync), str(r)],
            env=_env(cache),
            stdout=open(work / f"rank{r}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for r in range(n)
    ]
    try:
        for _ in range(6000):  # polls every 0.1 s until every rank has imported axolotl (a hang guard)
            if all((sync / f"ready-{r}").exists() for r in range(n)) or any(
                p.poll() is not None for p in procs
            ):
                break
            time.sleep(0.1)
        (sync / "go").touch()
        codes = [p.wait(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "\n".join((work / f"rank{r}.log").read_text()[-3000:] for r in range(n))
    assert codes == [0] * n, logs
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(n)]


def test_two_ranks_at_once_prune_and_distil_once(tmp_path, tiny_models):
    base = tiny_models("llama", 6)
    cache = tmp_path / "cache"
    recipe = _recipe(
        tmp_path / "recipe.yml",
        base_model=str(base),
        output_dir=str(tmp_path / "out"),
        datasets=[{"path": "sdd://wordproblems?n=4", "type": "chat_template"}],
    )
    first, second = _ranks(recipe, cache, tmp_path / "ranks")

    # the same pruned model and distilled set on both ranks, in the shared cache
    assert first["base_model"] == second["base_model"]
    assert Path(first["base_model"]).parent == cache / "pruned"
    assert first["datasets"] == second["datasets"] and len(first["datasets"]) == 1
    assert Path(first["datasets"][0]).is_file() and str(cache) in first["datasets"][0]
    # one rank built each, the other waited for it and reused it
    assert sorted([first["prune"]["reused"], second["prune"]["reused"]]) == [False, True]
    reused = [r["distill"]["datasets"][0]["reused"] for r in (first, second)]
    assert sorted(reused) == [False, True]
    assert len(list((cache / "pruned").glob("*/sdd_prune.json"))) == 1
    assert len(list((cache / "axolotl-distilled").glob("*/distill_report.json"))) == 1
    assert first["prune"]["removed_blocks"] == second["prune"]["removed_blocks"]


def test_pre_pruned_and_pre_distilled_outputs_are_read_as_they_are(
    tmp_path, tiny_models, capsys, monkeypatch
):
    """No shared file system: prune and distil on one node, copy the outputs to another one where the
    unpruned model is not, and train from them there."""
    from axolotl.utils.dict import DictDefault

    from sdd_plugin.axolotl import SelfDistillationPlugin
    from sdd_plugin.axolotl.recipe import resolve_data_uri
    from sdd_plugin.cli import main
    from sdd_plugin.distill.stage import distill_dataset
    from sdd_plugin.interfaces import GenerationSettings
    from sdd_plugin.prune.stage import prune

    # node 0: `sdd prune` + `sdd distill`
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    monkeypatch.setenv("SDD_CACHE_DIR", str(node0 / "cache"))
    teacher = Path(shutil.copytree(tiny_models("llama", 6), node0 / "teacher"))
    prune(teacher, num_blocks=2, num_samples=4, out=node0 / "pruned")
    data = resolve_data_uri("sdd://wordproblems?n=4", "chat_template")
    settings = GenerationSettings(max_new_tokens=8, batch_size=4)
    distill_dataset(
        teacher,
        data,
        "messages",
        node0 / "distilled",
        settings=settings,
        measure_nll=False,
        show_progress=False,
    )
    # node 1: the outputs only (copied), an empty cache, no unpruned model
    for name in ("pruned", "distilled"):
        shutil.copytree(node0 / name, node1 / name)
    shutil.copy(data, node1 / "original.jsonl")
    shutil.rmtree(node0)
    cache = node1 / "cache"
    monkeypatch.setenv("SDD_CACHE_DIR", str(cache))
    over = {
        "base_model": str(node1 / "pruned"),
        "output_dir": str(node1 / "out"),
        "datasets": [{"path": str(node1 / "distilled"), "type": "chat_template"}],
    }
    recipe = _recipe(node1 / "recipe.yml", **over)  # sdd_prune and sdd_distill stay true

    assert main(["check", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "pruned already" in out and str(node1 / "distilled" / "distilled.jsonl") in out

    cfg = DictDefault(yaml.safe_load(recipe.read_text()))
    plugin = SelfDistillationPlugin()
    plugin.register(cfg)
    plugin.load_datasets(cfg)
    assert cfg.base_model == str(node1 / "pruned")
    assert plugin.prune_info["pre_pruned"] is True and plugin.prune_info["num_layers_after"] == 4
    assert [d.path for d in cfg.datasets] == [str(node1 / "distilled" / "distilled.jsonl")]
    (info,) = plugin.distill_info["datasets"]
    assert info["pre_distilled"] is True and info["report"]["rows"] == 4
    assert not (cache / "pruned").exists() and not (cache / "axolotl-distilled").exists()  # nothing built
    manifest = json.loads((node1 / "out" / "sdd_run.json").read_text())
    assert manifest["prune"]["pre_pruned"] and manifest["distill"]["datasets"][0]["pre_distilled"]

    # the same with the switches off
    off = DictDefault(
        yaml.safe_load(_recipe(node1 / "off.yml", sdd_prune=False, sdd_distill=False, **over).read_text())
    )
    plugin = SelfDistillationPlugin()
    plugin.register(off)
    plugin.load_datasets(off)
    assert off.base_model == str(node1 / "pruned") and plugin.prune_info["pre_pruned"] is True
    assert [d.path for d in off.datasets] == [str(node1 / "distilled" / "distilled.jsonl")]

    # a dataset still to distil needs a teacher, and the unpruned model is not on this node
    over["datasets"].append({"path": str(node1 / "original.jsonl"), "type": "chat_template"})
    todo = DictDefault(yaml.safe_load(_recipe(node1 / "todo.yml", **over).read_text()))
    with pytest.raises(ValueError, match=r"sdd_teacher: .* not on this machine, and datasets \[1\]"):
        SelfDistillationPlugin().register(todo)


# ------------------------------------------------------------------------ real axolotl train (slow)


@pytest.mark.slow
def test_axolotl_train_with_two_cpu_processes(tmp_path, tiny_models):
    """``axolotl train`` launched on 2 CPU processes (gloo) on a tiny model: both ranks register the
    plugin, one prunes and distils, the other reuses it, and the trainer runs data-parallel.

    ``accelerate launch --cpu --num_processes 2`` starts one process unless ``mpirun`` is given a
    host file (there is no MPI here); ``--multi_gpu`` with ``ACCELERATE_USE_CPU=true`` starts 2
    processes through torchrun, and transformers then sets up a gloo process group on CPU. axolotl
    0.19 maps each rank's model to accelerator index LOCAL_RANK there; the plugin maps it to the CPU."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    recipe = _recipe(
        tmp_path / "recipe.yml",
        base_model=str(tiny_models("llama", 6)),
        output_dir=str(out),
        dataset_prepared_path=str(tmp_path / "prepared"),
        datasets=[{"path": "sdd://wordproblems?n=8", "type": "chat_template"}],
        sdd_distill_limit=8,
        max_steps=2,
        micro_batch_size=1,
        gradient_accumulation_steps=1,
        sequence_len=256,
        save_strategy="no",
    )
    env = _env(cache)
    env["ACCELERATE_USE_CPU"] = "true"
    proc = subprocess.run(
        [str(BIN / "axolotl"), "train", str(recipe), "--", "--multi_gpu", "--num_processes", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert '"world_size": 2' in log
    # one process group: only rank 0 logs the loss, once per step (two lone trainers would log 4)
    assert log.count("{'loss':") == 2, log[-3000:]
    assert "2 processes on a CPU-only machine: device_map -> cpu" in log
    manifest = json.loads((out / "sdd_run.json").read_text())
    assert manifest["prune"]["enabled"] and manifest["prune"]["num_layers_after"] == 4
    assert (out / "adapter_model.safetensors").is_file()
    # built once: one pruned model, one distilled set in the cache
    assert len(list((cache / "pruned").glob("*/sdd_prune.json"))) == 1
    assert len(list((cache / "axolotl-distilled").glob("*/distill_report.json"))) == 1
    assert log.count("training the pruned model (4 blocks") == 2  # post_model_build on each rank

"""Recovery benchmark: baseline vs pruned vs SFT vs SDD vs merged, in one resumable command.

``run_recovery(preset, run_dir)`` runs on the default model:

1. baseline eval of the unpruned model;
2. prune ``n`` blocks by angular distance (the same call the Axolotl plugin makes, so the plugin
   reuses the result) and eval the pruned model without fine-tuning;
3. for each fine-tuning set: distillation stats (the same call the plugin makes, so the plugin
   reuses the rewrites), an SFT run and an SDD run through ``axolotl train`` on a recipe that differs
   only in ``sdd_distill`` (same hyper-parameters and seed), and an eval of each;
4. a SLERP merge of the SDD models (when there are two sets) and its eval;
5. speculative decoding with the unpruned model as target and each fine-tuned model as draft;
6. ``REPORT.md`` + ``results.json`` + PNG charts.

Every stage lives in ``run_dir/stages/<name>/`` and is keyed by a hash of its inputs (including
the keys of the stages it depends on): a stopped run resumes at the first unfinished stage, and a
changed setting recomputes only what depends on it. Inside a stage, distillation and evaluation
also resume at row / task granularity through their own caches, and training from its last
checkpoint (an unfinished stage with unchanged inputs keeps its folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator

from ..cache import stable_hash, write_json_atomic, write_text_atomic
from ..models import machine_summary

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "recipes" / "smollm2-135m-sdd-gsm8k-cpu.yml"
STAGE_FILE = "stage.json"
PENDING_FILE = "stage.pending.json"


class TrainSet(BaseModel):
    """One fine-tuning set of the benchmark."""

    name: str = Field(description="short name used in stage and model labels, e.g. 'gsm8k'")
    source: str = Field(description="'synthetic', a file under the data root, or a hub id")
    format: str = Field(description="sdd format of the source rows: gsm8k, dolly, alpaca")
    template: str = Field(description="distillation template: math or general")
    rows: int = Field(ge=1)


class Preset(BaseModel):
    """All settings of one benchmark run (hashed into the stage keys)."""

    name: str
    model: str = "smollm2-135m-instruct"
    num_blocks: int = 6
    metric: str = "angular"
    calibration: str | None = None
    calibration_samples: int = 64
    train_sets: list[TrainSet]
    # training (identical for SFT and SDD)
    epochs: float = 1
    max_steps: int | None = None
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    sequence_len: int = 384
    seed: int = 0
    #: weights dtype of teacher generation, training (autocast) and evaluation -- all models of a
    #: run share it. bfloat16 runs AVX512-BF16/AMX matmuls (2-3x fp32) but is emulated, 100x
    #: slower, on other CPUs; "auto" picks bfloat16 only where it is native (resolved at run start,
    #: so the stage keys and the report carry the dtype actually used)
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    #: training checkpoint every N optimizer steps (kept: the last one) so a stopped run resumes
    #: mid-training; 0 = no checkpoints
    save_steps: int = Field(25, ge=0)
    # distillation
    distill_max_new_tokens: int = 192
    distill_batch_size: int = 16
    #: sampled re-generations of rejected rewrites (0 = greedy only, as in the paper)
    distill_retries: int = 0
    # evaluation
    eval_tasks: list[str]
    eval_limit: int | None = None
    #: per-task limits overriding eval_limit (for sdd_mmlu it is per subject: 57 subjects)
    eval_task_limits: dict[str, int] = Field(default_factory=dict)
    eval_shots: dict[str, int] = Field(default_factory=dict)
    eval_batch_size: int = 8
    # speculative decoding
    specdec_prompts: int = 8
    specdec_max_new_tokens: int = 48
    merge: bool = True

    @model_validator(mode="after")
    def _limits_name_evaluated_tasks(self) -> Preset:
        for key in ("eval_task_limits", "eval_shots"):
            extra = sorted(set(getattr(self, key)) - set(self.eval_tasks))
            if extra:
                raise ValueError(f"{key} names task(s) not in eval_tasks: {', '.join(extra)}")
        return self


def _preset_quick() -> Preset:
    return Preset(
        name="quick",
        calibration="wikitext2/wiki.test.raw",
        train_sets=[
            TrainSet(name="gsm8k", source="gsm8k/train.jsonl", format="gsm8k", template="math", rows=48),
            TrainSet(
                name="dolly",
                source="dolly/databricks-dolly-15k.citations-stripped.jsonl.gz",
                format="dolly",
                template="general",
                rows=48,
            ),
        ],
        epochs=1,
        distill_max_new_tokens=160,
        eval_tasks=[
            "sdd_arc_easy",
            "sdd_arc_challenge",
            "sdd_hellaswag",
            "sdd_winogrande",
            "sdd_truthfulqa_mc2",
            "sdd_mmlu",
            "sdd_gsm8k",
        ],
        eval_limit=30,
        # MMLU's limit is per subject (57 subjects); generative GSM8K and TruthfulQA mc2 (6-shot
        # prompt, many choices: ~3 s an item) are the slow ones on CPU
        eval_task_limits={"sdd_mmlu": 2, "sdd_gsm8k": 10, "sdd_truthfulqa_mc2": 20},
        eval_shots={
            "sdd_arc_challenge": 0,
            "sdd_hellaswag": 0,
            "sdd_winogrande": 0,
            "sdd_mmlu": 0,
            "sdd_gsm8k": 0,
        },
        specdec_prompts=4,
        specdec_max_new_tokens=32,
    )


def _preset_large() -> Preset:
    """Paper-like sizing: 1,024 rows per set, 2 epochs. About 9 CPU-hours on 2 cores (bf16), so it
    needs a machine whose disk survives between sessions (every stage resumes)."""
    quick = _preset_quick()
    sets = [ts.model_copy(update={"rows": 1024}) for ts in quick.train_sets]
    return quick.model_copy(
        update={
            "name": "large",
            "train_sets": sets,
            "epochs": 2,
            "distill_max_new_tokens": 256,
            # more rewrites on the teacher's own distribution: 2 sampled retries of rejected rows
            # (acceptance was 29-38 % greedy on GSM8K); bigger batches for the decode engine
            "distill_retries": 2,
            "distill_batch_size": 32,
            # bf16 where the CPU has native bf16 (~1.4x faster LoRA steps, ~2x faster generation
            # and eval on an AVX512-BF16 Zen 4), float32 elsewhere
            "dtype": "auto",
            "eval_limit": 300,
            "eval_task_limits": {"sdd_mmlu": 10, "sdd_gsm8k": 100, "sdd_truthfulqa_mc2": 150},
            "eval_shots": {"sdd_arc_challenge": 0, "sdd_hellaswag": 0, "sdd_gsm8k": 0},
            "specdec_prompts": 16,
            "specdec_max_new_tokens": 64,
        }
    )


def _preset_full() -> Preset:
    """The largest run that finishes in one ~2-hour sitting on 2 CPU cores: 128 GSM8K and 96 Dolly rows,
    1 epoch, 0-shot evals with the item budget spent where the 135M model is above chance
    (ARC-Easy, HellaSwag)."""
    large = _preset_large()
    # Dolly rows are longer (general template, up to 256 new tokens): fewer of them keeps the two
    # sets' distillation and training times about equal
    rows = {"gsm8k": 128, "dolly": 96}
    sets = [ts.model_copy(update={"rows": rows[ts.name]}) for ts in large.train_sets]
    return large.model_copy(
        update={
            "name": "full",
            "train_sets": sets,
            # a LoRA step of 8 rows takes ~24 s in fp32 on 2 AVX2 cores: 1 epoch keeps each of the
            # four fine-tunes near 6 min
            "epochs": 1,
            # per model (fp32, 2 AVX2 cores): ARC-E ~2.5 min, HellaSwag ~3 min, the rest ~4 min
            "eval_limit": 100,
            "eval_task_limits": {
                "sdd_arc_easy": 400,
                "sdd_hellaswag": 300,
                "sdd_mmlu": 1,
                # generative GSM8K (0 % for every model of this size) and TruthfulQA mc2 (~5 s an
                # item) are the slow ones and at chance here: kept in the suite, small
                "sdd_gsm8k": 5,
                "sdd_truthfulqa_mc2": 10,
            },
            "eval_shots": dict.fromkeys(
                ["sdd_arc_challenge", "sdd_hellaswag", "sdd_winogrande", "sdd_mmlu", "sdd_gsm8k"], 0
            ),
            "specdec_prompts": 4,
            "specdec_max_new_tokens": 48,
        }
    )


def _preset_demo() -> Preset:
    return Preset(
        name="demo",
        calibration=None,
        calibration_samples=32,
        train_sets=[
            TrainSet(name="wordproblems", source="synthetic", format="gsm8k", template="math", rows=48)
        ],
        max_steps=6,
        distill_max_new_tokens=128,
        # Bits per byte on held-out problems separates pruned from unpruned; sdd_synth_mc is at
        # chance for a 135M model (noise, not signal), so the demo leaves it out.
        eval_tasks=["sdd_synth_ppl"],
        eval_limit=100,  # measured (2 threads, load ~2): ~16 s per 50 docs per model
        merge=False,
        specdec_prompts=4,
        specdec_max_new_tokens=32,
    )


PRESETS: dict[str, Callable[[], Preset]] = {
    "demo": _preset_demo,
    "quick": _preset_quick,
    "full": _preset_full,
    "large": _preset_large,
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """The preset ``name`` with field ``overrides`` applied (validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    data = PRESETS[name]().model_dump()
    unknown = [k for k in overrides if k not in Preset.model_fields]
    if unknown:
        raise ValueError(f"unknown preset setting(s) {unknown}; known: {', '.join(Preset.model_fields)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Preset.model_validate(data)


# ---------------------------------------------------------------------------------------------
# stage runner
# ---------------------------------------------------------------------------------------------


class Stages:
    """Runs named stages once per input hash; records time per stage; resumes after a stop."""

    def __init__(self, run_dir: Path, echo: Callable[[str], None] = print) -> None:
        self.run_dir = run_dir
        self.echo = echo
        self.records: dict[str, dict[str, Any]] = {}

    def folder(self, name: str) -> Path:
        """The folder of stage ``name``."""
        return self.run_dir / "stages" / name

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(folder) -> summary`` unless a finished stage with the same inputs exists."""
        key = stable_hash(inputs)
        folder = self.folder(name)
        meta_path = folder / STAGE_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") == key:
                self.echo(f"[{name}] cached ({meta['seconds']:.0f} s when it ran)")
                meta["cached"] = True
                self.records[name] = meta
                return meta
            self.echo(f"[{name}] settings changed: recomputing")
        pending = folder / PENDING_FILE
        resuming = pending.is_file() and json.loads(pending.read_text(encoding="utf-8")).get("key") == key
        if folder.exists() and not resuming:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # an unfinished stage with the same inputs keeps its folder (e.g. training checkpoints)
        write_json_atomic(pending, {"stage": name, "key": key})
        self.echo(f"[{name}] {'resuming' if resuming else 'running'} ...")
        t0 = time.time()
        summary = fn(folder)
        meta = {
            "stage": name,
            "key": key,
            "inputs": inputs,
            "summary": summary,
            "seconds": round(time.time() - t0, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(meta_path, meta)
        pending.unlink(missing_ok=True)
        self.echo(f"[{name}] done in {meta['seconds']:.0f} s")
        meta["cached"] = False
        self.records[name] = meta
        return meta


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def training_rows(ts: TrainSet, data_root: Path | None) -> list[dict]:
    """The first ``ts.rows`` rows of a set in chat ``messages`` layout (axolotl ``chat_template``)."""
    from ..distill.formats import load_rows, read_examples

    if ts.source == "synthetic":
        from ..data.synthetic import word_problems

        raw = word_problems(ts.rows, seed=0, split="train")
    else:
        if data_root is None:
            raise FileNotFoundError(f"train set {ts.name!r} needs the data root (../shared/data)")
        path = data_root / ts.source
        if not path.is_file():
            raise FileNotFoundError(f"train set {ts.name!r}: {path} not found")
        raw = load_rows(path, ts.format, limit=ts.rows)
    if len(raw) < ts.rows:
        raise ValueError(f"train set {ts.name!r} has {len(raw)} rows, preset asks for {ts.rows}")
    examples = read_examples(raw, ts.format, ts.source)
    return [
        {
            "messages": [
                {"role": "user", "content": ex.instruction},
                # prompt_reference = the original with GSM8K <<calc>> annotations stripped; SFT
                # and SDD (whose fallback is this same text) see the same cleaned originals.
                {"role": "assistant", "content": ex.prompt_reference},
            ]
        }
        for ex in examples
    ]


# ---------------------------------------------------------------------------------------------
# training through the user-facing axolotl recipe
# ---------------------------------------------------------------------------------------------


def recipe_for(
    preset: Preset,
    ts: TrainSet,
    data_file: Path,
    output_dir: Path,
    distill: bool,
    calibration: str | None = None,
) -> dict:
    """The CPU recipe with this run's data and settings; SFT and SDD differ only in ``sdd_distill``.

    ``calibration`` is the resolved calibration source (the preset's may be relative to the data root).
    """
    if not RECIPE.is_file():
        raise FileNotFoundError(f"{RECIPE} not found (the benchmark runs from a source checkout)")
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    recipe.update(
        base_model=preset.model,
        sdd_prune=True,
        sdd_prune_num_blocks=preset.num_blocks,
        sdd_prune_metric=preset.metric,
        sdd_prune_calibration=calibration,
        sdd_prune_calibration_limit=preset.calibration_samples,
        sdd_prune_start=None,
        sdd_distill=distill,
        sdd_distill_template=ts.template,
        sdd_distill_checker=ts.template,
        sdd_distill_max_new_tokens=preset.distill_max_new_tokens,
        sdd_distill_batch_size=preset.distill_batch_size,
        sdd_distill_do_sample=False,
        sdd_distill_retries=preset.distill_retries,
        sdd_distill_dtype=preset.dtype,
        sdd_distill_limit=None,
        datasets=[{"path": str(data_file), "type": "chat_template"}],
        dataset_prepared_path=str(output_dir / "prepared"),
        output_dir=str(output_dir / "adapter"),
        sequence_len=preset.sequence_len,
        lora_r=preset.lora_r,
        lora_alpha=preset.lora_alpha,
        micro_batch_size=preset.micro_batch_size,
        gradient_accumulation_steps=preset.gradient_accumulation_steps,
        num_epochs=preset.epochs,
        learning_rate=preset.learning_rate,
        seed=preset.seed,
    )
    if preset.max_steps:
        recipe["max_steps"] = preset.max_steps
    else:
        recipe.pop("max_steps", None)
    if preset.dtype == "bfloat16":
        recipe["bf16"] = True  # autocast on CPU (the plugin sets use_cpu)
    if preset.save_steps:
        # a checkpoint every save_steps (the last one kept); a rerun resumes from it
        recipe.update(
            save_strategy="steps",
            save_steps=preset.save_steps,
            save_total_limit=1,
            auto_resume_from_checkpoints=True,
        )
    return recipe


def _run_process_group(cmd: list[str], env: dict, stdout: Any) -> int:
    """Run ``cmd`` in its own process group and wait; if this process is interrupted (Ctrl-C or
    SIGTERM), the whole group goes down with it.

    ``axolotl train`` re-launches itself through ``accelerate``: stopping only the benchmark would
    leave a trainer running, still writing checkpoints into a stage folder that the next run
    reuses."""
    import signal
    import threading

    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    restore = None
    if threading.current_thread() is threading.main_thread():

        def on_term(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        restore = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue


def axolotl_train(recipe: dict, folder: Path) -> Path:
    """Run ``axolotl train`` on ``recipe`` (written to ``folder/recipe.yml``); return the adapter dir."""
    path = folder / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # axolotl re-launches itself through `accelerate`, found on PATH: put this venv's bin first.
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    exe = shutil.which("axolotl", path=bindir) or shutil.which("axolotl")
    if exe is None:
        raise FileNotFoundError("the `axolotl` command is missing: pip install 'sdd-plugin[axolotl]'")
    logf = folder / "axolotl.log"
    with open(logf, "w", encoding="utf-8") as f:
        returncode = _run_process_group([exe, "train", str(path)], env=env, stdout=f)
    if returncode != 0:
        tail = "".join(logf.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"axolotl train failed (exit {returncode}); see {logf}:\n{tail}")
    adapter = Path(recipe["output_dir"])
    if not (adapter / "adapter_config.json").is_file():
        raise RuntimeError(f"axolotl finished but wrote no LoRA adapter in {adapter}; see {logf}")
    return adapter


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------


def _data_root(data_root: str | os.PathLike | None, preset: Preset) -> Path | None:
    needs = any(ts.source != "synthetic" for ts in preset.train_sets) or any(
        not t.startswith("sdd_synth") for t in preset.eval_tasks
    )
    if not needs:
        return None
    from ..evaluate import resolve_data_root

    return resolve_data_root(data_root)


def run_recovery(
    preset: str | Preset = "quick",
    run_dir: str | os.PathLike = "runs/recovery",
    data_root: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
    **overrides: Any,
) -> dict[str, Any]:
    """Run (or resume) the recovery benchmark; returns the results dict also written to disk."""
    from ..models import resolve_dtype, warn_if_slow_dtype

    preset = preset if isinstance(preset, Preset) else get_preset(preset, **overrides)
    preset = preset.model_copy(update={"dtype": resolve_dtype(preset.dtype)})
    warn_if_slow_dtype(preset.dtype, "the benchmark runs")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    root = _data_root(data_root, preset)
    calibration = str(root / preset.calibration) if (preset.calibration and root) else preset.calibration
    if calibration and not Path(calibration).exists():
        raise FileNotFoundError(f"calibration file {calibration} not found")
    stages = Stages(run_dir, echo)
    t_start = time.time()
    write_json_atomic(run_dir / "preset.json", preset.model_dump())
    echo(f"sdd bench recovery: preset {preset.name!r} -> {run_dir}")

    # only a non-default dtype enters the stage keys (and settings): float32 runs keep their keys
    dtype_key = {"dtype": preset.dtype} if preset.dtype != "float32" else {}
    eval_common = {
        "tasks": preset.eval_tasks,
        "limit": preset.eval_limit,
        "task_limits": preset.eval_task_limits,
        "shots": preset.eval_shots,
        "data_root": str(root) if root else None,
        **dtype_key,
    }

    def eval_stage(label: str, model_fn: Callable[[], str], upstream: dict) -> dict:
        from ..evaluate import evaluate

        def fn(folder: Path) -> dict:
            # one lm-eval call per distinct limit; results are cached per task inside evaluate()
            groups: dict[int | None, list[str]] = {}
            for t in preset.eval_tasks:
                groups.setdefault(preset.eval_task_limits.get(t, preset.eval_limit), []).append(t)
            res: dict = {}
            for i, (limit, tasks) in enumerate(groups.items()):
                part = evaluate(
                    model_fn(),
                    tasks,
                    limit=limit,
                    num_fewshot={t: k for t, k in preset.eval_shots.items() if t in tasks} or None,
                    batch_size=preset.eval_batch_size,
                    data_root=root,
                    out=folder / f"part{i}",
                    dtype=preset.dtype,
                )
                if not res:
                    res = part
                else:
                    res["tasks"].update(part["tasks"])
            res["limit"] = {t: preset.eval_task_limits.get(t, preset.eval_limit) for t in preset.eval_tasks}
            res["label"] = label
            write_json_atomic(folder / "eval_results.json", res)
            return {"label": label}

        stages.run(f"eval-{label}", {**eval_common, "upstream": upstream}, fn)
        return json.loads((stages.folder(f"eval-{label}") / "eval_results.json").read_text())

    # 1. baseline
    from ..models import resolve_model

    base_path = str(resolve_model(preset.model))
    base_key = {"model": preset.model}
    evals: dict[str, dict] = {"baseline": eval_stage("baseline", lambda: base_path, base_key)}

    # 2. prune: the same call the axolotl plugin makes. prune() is content-addressed (model, settings,
    # calibration content, code version), so it is reused when nothing changed, and its folder name
    # keys every downstream stage: a changed pruning recomputes everything that depends on it.
    from ..prune import prune

    echo("[prune] scoring and pruning (reused when cached) ...")
    t_prune = time.time()
    pruned = prune(
        base_path,
        num_blocks=preset.num_blocks,
        metric=preset.metric,
        calibration=calibration,
        num_samples=preset.calibration_samples,
    )
    prune_seconds = round(time.time() - t_prune, 1)
    prune_inputs = {"pruned_model": Path(pruned.out_dir).name}

    def do_prune(folder: Path) -> dict:
        for name in ("sdd_prune.json", "heatmap.png", "README.md"):
            if (Path(pruned.out_dir) / name).is_file():
                shutil.copy(Path(pruned.out_dir) / name, folder / name)
        return {
            "pruned_model": str(pruned.out_dir),
            "reused": bool(pruned.reused),
            "prune_seconds": prune_seconds,
            "removed_blocks": list(pruned.removed_blocks),
            "num_layers_before": pruned.num_layers_before,
            "num_layers_after": pruned.num_layers_after,
            "params_before": pruned.params_before,
            "params_after": pruned.params_after,
        }

    prune_meta = stages.run("prune", prune_inputs, do_prune)
    if not prune_meta["cached"]:
        prune_meta["seconds"] = prune_seconds  # the work happened in prune(), before the stage
    pruned_path = prune_meta["summary"]["pruned_model"]
    evals["pruned"] = eval_stage("pruned", lambda: pruned_path, prune_inputs)

    # 3. per fine-tuning set: data, distillation stats, SFT and SDD training, evals
    adapters: dict[str, str] = {}
    distill_stats: dict[str, dict] = {}
    for ts in preset.train_sets:
        data_inputs = {"set": ts.model_dump(), "root": str(root) if root else None}

        def do_data(folder: Path, ts: TrainSet = ts) -> dict:
            from ..data.synthetic import write_jsonl

            path = write_jsonl(training_rows(ts, root), folder / f"{ts.name}.jsonl")
            return {"path": str(path), "rows": ts.rows}

        data_meta = stages.run(f"data-{ts.name}", data_inputs, do_data)
        data_file = Path(data_meta["summary"]["path"])

        distill_inputs = {
            "data": data_inputs,
            "teacher": preset.model,
            "max_new_tokens": preset.distill_max_new_tokens,
            "batch_size": preset.distill_batch_size,
            **({"retries": preset.distill_retries} if preset.distill_retries else {}),
            **dtype_key,
        }

        def do_distill(folder: Path, ts: TrainSet = ts, data_file: Path = data_file) -> dict:
            from ..distill.stage import distill_dataset
            from ..interfaces import GenerationSettings

            res = distill_dataset(
                base_path,
                str(data_file),
                "messages",
                folder / "distilled.jsonl",
                template=ts.template,
                checker=ts.template,
                settings=GenerationSettings(
                    max_new_tokens=preset.distill_max_new_tokens,
                    batch_size=preset.distill_batch_size,
                    extra=dict(dtype_key),
                ),
                retries=preset.distill_retries,
            )
            return dict(res.report)

        distill_stats[ts.name] = stages.run(f"distill-{ts.name}", distill_inputs, do_distill)["summary"]

        for mode in ("sft", "sdd"):
            label = f"{mode}-{ts.name}"
            train_inputs = {
                "data": data_inputs,
                "prune": prune_inputs,
                "distill": distill_inputs if mode == "sdd" else None,
                "training": preset.model_dump(
                    include={
                        "epochs",
                        "max_steps",
                        "learning_rate",
                        "lora_r",
                        "lora_alpha",
                        "micro_batch_size",
                        "gradient_accumulation_steps",
                        "sequence_len",
                        "seed",
                    }
                ),
                **dtype_key,
            }

            def do_train(
                folder: Path, ts: TrainSet = ts, mode: str = mode, data_file: Path = data_file
            ) -> dict:
                recipe = recipe_for(
                    preset, ts, data_file, folder, distill=(mode == "sdd"), calibration=calibration
                )
                adapter = axolotl_train(recipe, folder)
                manifest = adapter / "sdd_run.json"
                info = json.loads(manifest.read_text()) if manifest.is_file() else {}
                return {
                    "adapter": str(adapter),
                    "plugin": info.get("prune", {}),
                    "distill": info.get("distill"),
                }

            meta = stages.run(f"train-{label}", train_inputs, do_train)
            adapters[label] = meta["summary"]["adapter"]
            evals[label] = eval_stage(label, lambda a=adapters[label]: a, train_inputs)

    # 4. merge the SDD models
    sdd_labels = [f"sdd-{ts.name}" for ts in preset.train_sets]
    if preset.merge and len(sdd_labels) >= 2:
        merge_inputs = {"models": [stages.records[f"train-{x}"]["key"] for x in sdd_labels[:2]], "t": 0.5}

        def do_merge(folder: Path) -> dict:
            from ..merge import merge_models

            out = merge_models(
                [adapters[x] for x in sdd_labels[:2]], method="slerp", t=0.5, out=folder / "model"
            )
            return {"model": str(out)}

        merged = stages.run("merge-sdd", merge_inputs, do_merge)["summary"]["model"]
        evals["merged-sdd"] = eval_stage("merged-sdd", lambda: merged, merge_inputs)

    # 5. speculative decoding: unpruned target, each fine-tuned model as draft
    specdec: dict[str, dict] = {}
    if preset.specdec_prompts > 0:
        for label, adapter in adapters.items():
            sd_inputs = {
                "draft": stages.records[f"train-{label}"]["key"],
                "prompts": preset.specdec_prompts,
                "max_new_tokens": preset.specdec_max_new_tokens,
            }

            def do_specdec(folder: Path, adapter: str = adapter) -> dict:
                from ..specdec import default_prompts, measure_specdec

                result = measure_specdec(
                    base_path,
                    adapter,
                    prompts=default_prompts()[: preset.specdec_prompts],
                    max_new_tokens=preset.specdec_max_new_tokens,
                    out=folder,
                )
                return result["summary"]

            specdec[label] = stages.run(f"specdec-{label}", sd_inputs, do_specdec)["summary"]

    # 6. report
    results = {
        "preset": preset.model_dump(),
        "run_dir": str(run_dir),
        "evals": evals,
        "prune": prune_meta["summary"],
        "distill": distill_stats,
        "specdec": specdec,
        "stages": {k: {"seconds": v["seconds"], "cached": v["cached"]} for k, v in stages.records.items()},
        "wall_seconds": round(time.time() - t_start, 1),
    }
    write_recovery_report(results, run_dir)
    echo(f"report: {run_dir / 'REPORT.md'}")
    return results


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def write_recovery_report(results: dict[str, Any], run_dir: Path) -> Path:
    """Write ``results.json``, ``recovery.{json,md,png}`` and ``REPORT.md`` into ``run_dir``."""
    from ..evaluate import (
        INFORMATIVE_SIGMAS,
        format_score,
        higher_is_better,
        metric_label,
        paired_gap,
        plot_recovery,
        recovery_table,
    )

    evals = results["evals"]
    baseline = evals["baseline"]
    others = [dict(v, label=k) for k, v in evals.items() if k != "baseline"]
    table = recovery_table(others, dict(baseline, label="baseline"))
    write_json_atomic(run_dir / "recovery.json", table)
    plot_recovery(table, run_dir / "recovery.png")
    results["recovery"] = table

    preset = results["preset"]
    lines = [
        f"# Recovery benchmark — preset `{preset['name']}`",
        "",
        f"Model `{preset['model']}`, {preset['num_blocks']} blocks removed by `{preset['metric']}` "
        f"(blocks {results['prune']['removed_blocks']}, {results['prune']['num_layers_before']} → "
        f"{results['prune']['num_layers_after']}). Preset `{preset['name']}`"
        + (" is a sanity check, not evidence." if preset["name"] not in ("full", "large") else "."),
        "",
        "Settings (identical for SFT and SDD): "
        + ", ".join(f"{ts['name']} {ts['rows']} rows" for ts in preset["train_sets"])
        + f"; {preset['epochs']:g} epoch(s)"
        + (f", max {preset['max_steps']} steps" if preset.get("max_steps") else "")
        + f"; LoRA r {preset['lora_r']} / alpha {preset['lora_alpha']}, lr {preset['learning_rate']:g}, "
        f"batch {preset['micro_batch_size']} × {preset['gradient_accumulation_steps']}, "
        f"sequence {preset['sequence_len']}, seed {preset['seed']}; teacher max "
        f"{preset['distill_max_new_tokens']} new tokens, {preset.get('distill_retries', 0)} sampled "
        f"retries; dtype {preset.get('dtype', 'float32')} for generation, training and eval.",
        "",
        f"Machine (where the report was written): {machine_summary()}.",
        "",
        "## Scores",
        "",
    ]
    tasks = table["tasks"]
    # lower-is-better tasks (bits per byte) print as plain numbers and stay out of the average
    hib = {t: higher_is_better(dict(baseline["tasks"][t], task=t)) for t in tasks}

    def _cell(v: float | None, t: str) -> str:
        return _pct(v) if hib[t] else format_score(v, False)

    heads = [
        t if hib[t] else f"{t} ({metric_label(baseline['tasks'][t].get('metric'), False)})" for t in tasks
    ]
    lines.append(
        "| model | "
        + " | ".join(heads)
        + " | average | recovery | above-chance recovery | … informative tasks |"
    )
    lines.append("|---" * (len(tasks) + 5) + "|")
    hi = [t for t in tasks if hib[t]]
    b_avg = sum(baseline["tasks"][t]["value"] for t in hi) / len(hi) if hi else None
    lines.append(
        "| baseline | "
        + " | ".join(_cell(baseline["tasks"][t]["value"], t) for t in tasks)
        + (f" | {_pct(b_avg)} | 100 | 100 | 100 |" if hi else " | – | – | – | – |")
    )
    for m in table["models"]:
        avg = m["average"]
        lines.append(
            f"| {m['model']} | "
            + " | ".join(_cell(m["tasks"].get(t, {}).get("score"), t) for t in tasks)
            + f" | {_pct(avg['score'])} | {_pct(avg['recovery'])} | {_pct(avg['above_chance_recovery'])} |"
            + f" {_pct(avg.get('above_chance_recovery_informative'))} |"
        )
    shots = {t: baseline["tasks"][t].get("shots") for t in tasks}
    ns = {t: baseline["tasks"][t].get("n") for t in tasks}
    lines += [
        "",
        f"Items per task: {ns}; shots: {shots}. Scores in %, recovery vs the unpruned baseline "
        "(plain = score / baseline; above-chance = (score − chance) / (baseline − chance)), averaged over tasks."
        + (
            " Tasks marked ↓ (bits per byte) are lower-is-better plain numbers, not %, and are not in the "
            "average/recovery columns; their recovery (baseline / score): "
            + ", ".join(
                f"{m['model']} {_pct(m['average'].get('lower_is_better_recovery'))}%" for m in table["models"]
            )
            + "."
            if not all(hib.values())
            else ""
        ),
        "",
        "![recovery](recovery.png)",
        "",
    ]
    by = {m["model"]: m["average"] for m in table["models"]}
    gaps = []
    for ts in preset["train_sets"]:
        sft, sdd = by.get(f"sft-{ts['name']}"), by.get(f"sdd-{ts['name']}")
        if (
            sft
            and sdd
            and sft["above_chance_recovery"] is not None
            and sdd["above_chance_recovery"] is not None
        ):
            gap = 100 * (sdd["above_chance_recovery"] - sft["above_chance_recovery"])
            gaps.append(gap)
            pair = (evals[f"sft-{ts['name']}"], evals[f"sdd-{ts['name']}"])
            ci = paired_gap(*pair, baseline)
            inf = paired_gap(*pair, baseline, only_informative=True)
            text = f"- **{ts['name']}**: SDD − SFT above-chance recovery = {gap:+.1f} points"
            if ci:
                text += f" (paired bootstrap 95 % interval {ci['ci95'][0]:+.1f} to {ci['ci95'][1]:+.1f})"
            if inf:
                text += (
                    f"; over the informative tasks ({', '.join(inf['tasks'])}) {inf['gap']:+.1f} "
                    f"({inf['ci95'][0]:+.1f} to {inf['ci95'][1]:+.1f})"
                )
            lines.append(text + ".")
            results.setdefault("gaps", {})[ts["name"]] = {"suite": ci, "informative": inf}
        if (
            sft
            and sdd
            and sft.get("lower_is_better_recovery") is not None
            and sdd.get("lower_is_better_recovery") is not None
        ):
            lgap = 100 * (sdd["lower_is_better_recovery"] - sft["lower_is_better_recovery"])
            lines.append(
                f"- **{ts['name']}**: SDD − SFT recovery on the ↓ (bits-per-byte) tasks = {lgap:+.1f} points."
            )
    if gaps:
        mean_gap = sum(gaps) / len(gaps)
        verdict = "meets" if mean_gap >= 10 else f"misses by {10 - mean_gap:.1f} points"
        lines.append(f"- Mean SDD − SFT gap {mean_gap:+.1f} points: {verdict} the +10-point target.")
        informative_tasks = [
            t for t in tasks if any(m["tasks"].get(t, {}).get("informative") for m in table["models"])
        ]
        lines.append(
            "- The suite average includes tasks where the baseline is not clearly above chance "
            f"(< {INFORMATIVE_SIGMAS:g} standard errors): there (score − chance) / (baseline − chance) "
            "divides by noise. Informative tasks in this run: "
            + (", ".join(informative_tasks) or "none")
            + ". Intervals resample each task's items with the same indices for SFT and SDD."
        )
    write_json_atomic(run_dir / "results.json", results)  # with the gaps and their intervals
    lines += [
        "",
        "## Distillation",
        "",
        "| set | rows | accepted % | fallbacks | teacher NLL original → distilled | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in results["distill"].items():
        nll = (
            f"{d['nll_original']:.3f} → {d['nll_distilled']:.3f}"
            if d.get("nll_original") is not None and d.get("nll_distilled") is not None
            else "–"
        )
        tps = d.get("tokens_per_s")
        # None when every row came from the row cache (nothing was generated in this run)
        speed = f"{tps:.1f}" if tps is not None else "– (rows cached)"
        lines.append(
            f"| {name} | {d.get('rows')} | {_pct(d.get('acceptance_rate'))} | {d.get('fallbacks')} | {nll} | "
            f"{speed} |"
        )
    lines += [
        "",
        "The NLL columns are the teacher's mean per-token NLL of the SFT targets (original responses) "
        "and of the SDD targets (distilled): lower = closer to the model's own distribution.",
        "",
    ]
    if results["specdec"]:
        lines += [
            "## Speculative decoding (target: unpruned model)",
            "",
            "| draft | acceptance rate | tokens per target step | speedup | identical greedy outputs |",
            "|---|---|---|---|---|",
        ]
        for label, s in results["specdec"].items():
            lines.append(
                f"| {label} | {_pct(s.get('acceptance_rate'))} | {s.get('tokens_per_step') or float('nan'):.2f} | "
                f"{s.get('speedup') or float('nan'):.2f}× | {s.get('all_identical')} |"
            )
        lines += ["", "Speedups are ratios of two timings in the same run on a shared 2-core CPU: noisy.", ""]
    lines += ["## Time per stage", "", "| stage | seconds | cached now |", "|---|---|---|"]
    for k, v in results["stages"].items():
        lines.append(f"| {k} | {v['seconds']:.0f} | {v['cached']} |")
    lines += ["", f"Wall time of this invocation: {results['wall_seconds']:.0f} s.", ""]
    if table.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in table["warnings"]] + [""]
    path = run_dir / "REPORT.md"
    write_text_atomic(path, "\n".join(lines))
    return path

"""Forgetting-curve study (``sdd bench drift``): how far fine-tuning brings a pruned model back
towards the unpruned one, with self-distilled data (SDD) against the original data (SFT).

``run_drift(preset, run_dir)``:

1. prune the model (the call the Axolotl plugin repeats and reuses) and record its cost;
2. the fine-tuning rows, their self-distillation (``distill_dataset`` with sampled retries and the
   chosen checker; the plugin reuses the rewrites) and the shortest sequence cap that keeps
   ``sequence_coverage`` of the SFT and SDD rows whole;
3. held-out documents: the unpruned model's own answers to Dolly instructions never trained on,
   WikiText-2 passages and GSM8K test solutions;
4. every trained arm through the same ``axolotl train`` recipe (same rows, order, seed, learning
   rate and steps; arms differ only in their :data:`ARMS` recipe keys), checkpoints kept at the
   preset's log-spaced steps;
5. per-document ``KL(unpruned || model)`` and NLL of every arm at every checkpoint; ARC-Easy and
   HellaSwag accuracy of the pruned model and of the compared arms at ``choice_steps``;
6. prefill / decode tokens/s of the pruned and the original model, measured side by side;
7. ``results.json``, ``curves.png`` and ``REPORT.md`` in ``run_dir`` (:mod:`.drift_report`).

Stages are cached under ``cache_dir()/bench/drift-<run>`` (outside the work tree) and resume
after a stop; training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..cache import cache_dir, stable_hash, write_json_atomic
from .drift_data import train_set
from .drift_presets import ARMS, COMPARED, DriftPreset, get_drift_preset
from .drift_training import CheckpointKeeper, launch_full, study_recipe
from .presets import TrainSet
from .stages import Stages

#: bump when a stage computes something different for the same inputs (invalidates the stages)
VERSION = 1
#: measured document sets: held-out instruction answers, WikiText-2, GSM8K test solutions
DOC_SETS = ("instruct", "wikitext", "gsm8k")


# ----------------------------------------------------------------------------------- the study


@dataclass
class _Study:
    preset: DriftPreset
    stages: Stages
    echo: Callable[[str], None]
    root: Path
    calibration: str | None
    base_path: str
    dtype: str
    keys: dict[str, str] = field(default_factory=dict)  # stage name -> stage key (upstream of others)

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict]) -> dict[str, Any]:
        """A stage whose summary carries its CPU seconds and the load average around it."""

        def timed(folder: Path) -> dict:
            before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            load0 = os.getloadavg()[0]
            summary = fn(folder)
            after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
            return {**summary, "cpu_seconds": round(cpu, 1), "load_average": [load0, os.getloadavg()[0]]}

        meta = self.stages.run(name, {"v": VERSION, **inputs}, timed)
        self.keys[name] = meta["key"]
        return meta


def _prune(study: _Study, folder: Path) -> dict:
    from ..prune.stage import prune
    from .model_cost import model_shape

    p = study.preset
    res = prune(
        study.base_path,
        num_blocks=p.num_blocks,
        metric=p.metric,
        calibration=study.calibration,
        num_samples=p.calibration_samples,
    )
    return {
        "pruned_model": str(res.out_dir),
        "removed_blocks": list(res.removed_blocks),
        "num_layers_before": res.num_layers_before,
        "num_layers_after": res.num_layers_after,
        "original_shape": model_shape(study.base_path),
        "pruned_shape": model_shape(res.out_dir),
    }


def _write_rows(study: _Study, ts: TrainSet, folder: Path) -> dict:
    from ..data.synthetic import write_jsonl
    from .trainer import training_rows

    path = write_jsonl(training_rows(ts, study.root), folder / f"{ts.name}.jsonl")
    return {"path": str(path), "rows": ts.rows, "source": str(study.root / ts.source)}


def _distill(study: _Study, ts: TrainSet, data_file: Path, folder: Path) -> dict:
    from ..distill.stage import distill_dataset
    from ..interfaces import GenerationSettings

    p = study.preset
    res = distill_dataset(
        study.base_path,
        str(data_file),
        "messages",
        folder / "distilled.jsonl",
        template=ts.template,
        checker=p.distill_checker or ts.template,
        settings=GenerationSettings(
            max_new_tokens=p.distill_max_new_tokens,
            batch_size=p.distill_batch_size,
            extra={"dtype": study.dtype} if study.dtype != "float32" else {},
        ),
        retries=p.distill_retries,
    )
    return {**dict(res.report), "path": str(res.output_path)}


def _plan(study: _Study, data_file: Path, distilled: Path, folder: Path) -> dict:
    from ..models import load_tokenizer
    from .drift_data import chat_lengths, sequence_cap

    tok = load_tokenizer(study.base_path)
    lengths = {}
    for name, path in (("sft", data_file), ("sdd", distilled)):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        lengths[name] = chat_lengths(tok, rows)
    both = lengths["sft"] + lengths["sdd"]
    cap = study.preset.sequence_len or sequence_cap(both, study.preset.sequence_coverage)
    return {
        "sequence_len": cap,
        "computed": study.preset.sequence_len is None,
        "whole_rows": {k: sum(n <= cap for n in v) / len(v) for k, v in lengths.items()},
        "lengths": {k: {"median": sorted(v)[len(v) // 2], "max": max(v)} for k, v in lengths.items()},
    }


def _documents(study: _Study, ts: TrainSet, folder: Path) -> dict:
    from ..evaluate.divergence import reference_answers
    from ..models import load_tokenizer
    from ..prune.calibration import load_calibration_texts
    from .drift_data import documents_json, gsm8k_test_documents, heldout_instructions, wikitext_passages

    p = study.preset
    tok = load_tokenizer(study.base_path)
    instructions, rows = heldout_instructions(study.root, p.instruct_docs, ts)
    t0 = time.time()
    answers = reference_answers(
        study.base_path, instructions, p.instruct_max_new_tokens, p.distill_batch_size, study.dtype, True
    )
    seconds = time.time() - t0
    skip = load_calibration_texts(study.calibration, limit=p.calibration_samples) if study.calibration else []
    docs = {
        "instruct": documents_json(answers),
        "wikitext": documents_json(
            wikitext_passages(tok, study.root, p.wikitext_docs, p.wikitext_tokens, skip)
        ),
        "gsm8k": documents_json(gsm8k_test_documents(tok, study.root, p.gsm8k_docs)),
    }
    write_json_atomic(folder / "documents.json", docs)
    tokens = {
        k: sum(len(ids[:1024]) for ids in tok([d["text"] for d in v])["input_ids"]) for k, v in docs.items()
    }
    return {
        "tokens": tokens,
        "path": str(folder / "documents.json"),
        "dolly_rows": rows,
        "reference_seconds": round(seconds, 1),
        "documents": {k: len(v) for k, v in docs.items()},
    }


def _train(study: _Study, arm: str, ts: TrainSet, data_file: Path, cap: int, folder: Path) -> dict:
    from ..models import load_tokenizer
    from .drift_data import prepared_order
    from .trainer import axolotl_train

    p = study.preset
    recipe = study_recipe(p, arm, ts, data_file, folder, cap, study.dtype, study.calibration)
    out = Path(recipe["output_dir"])
    with CheckpointKeeper(out, set(p.checkpoints), strip_optimizer=p.regime == "full"):
        (axolotl_train if p.regime == "lora" else launch_full)(recipe, folder)
    keeper = CheckpointKeeper(out, set(p.checkpoints), strip_optimizer=p.regime == "full")
    keeper.sweep(final=True)
    found = keeper.complete()
    missing = [s for s in p.checkpoints if s not in found]
    if missing:
        raise RuntimeError(f"training {arm} wrote no checkpoint at step(s) {missing} in {out}")
    state = json.loads((found[p.max_steps] / "trainer_state.json").read_text(encoding="utf-8"))
    losses = [[h["step"], h["loss"]] for h in state.get("log_history", []) if "loss" in h]
    rows = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = prepared_order(
        folder / "prepared", load_tokenizer(study.base_path), [r["messages"][0]["content"] for r in rows], cap
    )
    manifest = out / "sdd_run.json"
    info = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    return {
        "output": str(out),
        "checkpoints": {str(s): str(found[s]) for s in p.checkpoints},
        "losses": losses,
        "order": order,
        "plugin_distill": info.get("distill"),
        "train_runtime": _train_runtime(folder / "axolotl.log"),
    }


def _train_runtime(log: Path) -> float | None:
    """The trainer's own ``train_runtime`` (seconds of the optimizer loop, without start-up) from
    the last run in ``log`` (a resumed run: the resumed part only)."""
    import ast
    import re

    found = re.findall(r"\{'train_runtime': [^}]*\}", log.read_text(encoding="utf-8", errors="replace"))
    return float(ast.literal_eval(found[-1])["train_runtime"]) if found else None


def _measure(study: _Study, models: dict[str, str], docs_path: Path, folder: Path) -> dict:
    """Per-document KL(unpruned || model), NLL and bytes of every model on every document set."""
    from ..evaluate.divergence import as_causal_lm, kl_per_document
    from ..models import load_tokenizer
    from .drift_data import documents_from_json

    docs = json.loads(docs_path.read_text(encoding="utf-8"))
    tok = load_tokenizer(study.base_path)
    reference = as_causal_lm(study.base_path, study.dtype)
    loaded = {label: as_causal_lm(path, study.dtype) for label, path in models.items()}
    scores, seconds = {}, {}
    for name in DOC_SETS:
        t0 = time.time()
        per_model = kl_per_document(
            reference,
            loaded,
            documents_from_json(docs[name]),
            tokenizer=tok,
            batch_size=study.preset.measure_batch_size,
            max_length=1024,
            show_progress=True,
        )
        seconds[name] = round(time.time() - t0, 1)
        scores[name] = {label: [list(d) for d in per_doc] for label, per_doc in per_model.items()}
    write_json_atomic(folder / "scores.json", scores)
    return {"models": list(models), "path": str(folder / "scores.json"), "seconds": seconds}


def _choices(study: _Study, model: str, task: str, folder: Path) -> dict:
    from ..evaluate.choices import evaluate_choices

    p = study.preset
    res = evaluate_choices(
        model, task, study.root, p.choice_items[task], batch_size=p.choice_batch_size, dtype=study.dtype
    )
    res.pop("loglikelihoods", None)
    return res


def _throughput(study: _Study, pruned: str, folder: Path) -> dict:
    from .model_cost import compare_throughput

    p = study.preset
    return compare_throughput(
        {"original": study.base_path, "pruned": pruned},
        dtype=study.dtype,
        batch=p.throughput_batch,
        prompt_tokens=p.throughput_prompt_tokens,
        new_tokens=p.throughput_new_tokens,
    )


def stage_root(run_dir: Path) -> Path:
    """Where the stages of the study writing to ``run_dir`` are cached (outside the work tree)."""
    return cache_dir() / "bench" / f"drift-{run_dir.name}-{stable_hash(str(run_dir), 8)}"


def run_drift(
    preset: str | DriftPreset = "default",
    run_dir: str | os.PathLike = "runs/drift",
    data_root: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
    **overrides: Any,
) -> dict[str, Any]:
    """Run (or resume) the study; returns the results also written to ``run_dir/results.json``."""
    from ..evaluate import resolve_data_root
    from ..models import resolve_dtype, resolve_model, warn_if_slow_dtype
    from .drift_report import write_report

    p = preset if isinstance(preset, DriftPreset) else get_drift_preset(preset, **overrides)
    if p.distill_checker:
        from ..plugins import get_checker

        get_checker(p.distill_checker)  # unknown checker: error before any work
    dtype = resolve_dtype(p.dtype)
    warn_if_slow_dtype(dtype, "the study runs")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    root = resolve_data_root(data_root)
    calibration = str(root / p.calibration) if p.calibration else None
    if calibration and not Path(calibration).exists():
        raise FileNotFoundError(f"calibration file {calibration} not found")
    ts = train_set(p.train_set, p.rows)
    study = _Study(
        p, Stages(stage_root(run_dir), echo), echo, root, calibration, str(resolve_model(p.model)), dtype
    )
    t_start = time.time()
    echo(f"sdd bench drift: preset {p.name!r} ({dtype}) -> {run_dir} (stages in {study.stages.run_dir})")
    common = {"model": p.model, "dtype": dtype}

    prune_inputs = {
        **common,
        **p.model_dump(include={"num_blocks", "metric", "calibration", "calibration_samples"}),
    }
    pruning = study.run("prune", prune_inputs, partial(_prune, study))["summary"]
    pruned = pruning["pruned_model"]
    data = study.run("data", {"set": ts.model_dump(), "root": str(root)}, partial(_write_rows, study, ts))
    data_file = Path(data["summary"]["path"])
    distill_keys = {"distill_max_new_tokens", "distill_batch_size", "distill_retries", "distill_checker"}
    distill_inputs = {"data": study.keys["data"], **common, **p.model_dump(include=distill_keys)}
    distill = study.run("distill", distill_inputs, partial(_distill, study, ts, data_file))["summary"]
    plan_inputs = {
        "distill": study.keys["distill"],
        **p.model_dump(include={"sequence_len", "sequence_coverage"}),
    }
    plan = study.run("plan", plan_inputs, partial(_plan, study, data_file, Path(distill["path"])))["summary"]
    doc_keys = {"instruct_docs", "instruct_max_new_tokens", "wikitext_docs", "wikitext_tokens", "gsm8k_docs"}
    doc_inputs = {
        **common,
        "train": study.keys["data"],
        "prune": study.keys["prune"],
        **p.model_dump(include=doc_keys),
    }
    docs = study.run("documents", doc_inputs, partial(_documents, study, ts))["summary"]
    docs_path = Path(docs["path"])

    train_keys = {"regime", "checkpoints", "learning_rate", "lora_r", "lora_alpha", "micro_batch_size"}
    train_keys |= {"gradient_accumulation_steps", "seed"}
    trained: dict[str, dict] = {}
    for arm in [a for a in p.arms if ARMS[a].recipe is not None]:
        inputs = {
            "prune": study.keys["prune"],
            "plan": study.keys["plan"],  # the cap; also the distilled rows' key
            "arm": ARMS[arm].recipe,
            **common,
            **p.model_dump(include=train_keys),
        }
        fn = partial(_train, study, arm, ts, data_file, plan["sequence_len"])
        trained[arm] = study.run(f"train-{arm}", inputs, fn)["summary"]

    measure_inputs = {"documents": study.keys["documents"], "batch": p.measure_batch_size}
    models_of = {"pruned": {"pruned": pruned}}
    models_of.update(
        {arm: {str(s): t["checkpoints"][str(s)] for s in p.checkpoints} for arm, t in trained.items()}
    )
    scores = {}
    for arm, models in models_of.items():
        upstream = study.keys.get(f"train-{arm}", study.keys["prune"])
        fn = partial(_measure, study, models, docs_path)
        meta = study.run(f"measure-{arm}", {**measure_inputs, "models": upstream}, fn)
        scores[arm] = json.loads(Path(meta["summary"]["path"]).read_text(encoding="utf-8"))

    choice_models = {"pruned": pruned}
    for arm in [a for a in trained if a in COMPARED]:
        choice_models.update({f"{arm}@{s}": trained[arm]["checkpoints"][str(s)] for s in p.accuracy_steps})
    choices: dict[str, dict[str, dict]] = {task: {} for task in p.choice_items}
    for label, model in choice_models.items():
        arm = label.split("@")[0]
        upstream = study.keys.get(f"train-{arm}", study.keys["prune"])
        for task, items in p.choice_items.items():
            inputs = {"model": upstream, "label": label, "task": task, "items": items, "dtype": dtype}
            meta = study.run(
                f"choices-{label.replace('@', '-')}-{task}", inputs, partial(_choices, study, model, task)
            )
            choices[task][label] = meta["summary"]

    tp_keys = {"throughput_batch", "throughput_prompt_tokens", "throughput_new_tokens"}
    tp_inputs = {"prune": study.keys["prune"], **common, **p.model_dump(include=tp_keys)}
    throughput = study.run("throughput", tp_inputs, partial(_throughput, study, pruned))["summary"]

    raw = {
        "kind": "drift",
        "preset": p.model_dump(),
        "resolved": {
            "dtype": dtype,
            "learning_rate": p.lr,
            "max_steps": p.max_steps,
            "epochs": p.epochs,
            "save_steps": p.save_steps,
            "accuracy_steps": p.accuracy_steps,
            "train_rows_file": str(data_file),
            "stage_cache": str(study.stages.run_dir),
        },
        "arms": {a: ARMS[a].description for a in p.arms},
        "compared": list(COMPARED),
        "pruning": pruning,
        "throughput": throughput,
        "distill": distill,
        "plan": plan,
        "documents": docs,
        "training": trained,
        "scores": scores,
        "choices": choices,
        "stages": {
            k: {
                "seconds": v["seconds"],
                "cpu_seconds": v["summary"].get("cpu_seconds"),
                "load_average": v["summary"].get("load_average"),
                "cached": v["cached"],
            }
            for k, v in study.stages.records.items()
        },
        "wall_seconds": round(time.time() - t_start, 1),
    }
    results = write_report(raw, run_dir)
    from ..report import build_report

    echo(f"report: {build_report(run_dir)}")
    return results

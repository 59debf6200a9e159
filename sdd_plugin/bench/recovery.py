"""Recovery benchmark: baseline vs pruned vs SFT vs SDD vs merged, in one resumable command.

``run_recovery(preset, run_dir)`` runs on the default model:

1. baseline eval of the unpruned model;
2. prune ``n`` blocks by angular distance (the same call the Axolotl plugin makes, so the plugin
   reuses the result) and eval the pruned model without fine-tuning;
3. for each fine-tuning set: its chat rows, distillation stats (the same call the plugin makes, so
   the plugin reuses the rewrites), an SFT run and an SDD run through ``axolotl train`` on a recipe
   that differs only in ``sdd_distill`` (same hyper-parameters and seed), and an eval of each;
4. a SLERP merge of the SDD models (when there are two sets) and its eval;
5. speculative decoding with the unpruned model as target and each fine-tuned model as draft;
6. ``results.json`` + ``recovery.{json,png}``, and ``REPORT.md`` through ``sdd_plugin.report``.

Every stage lives in ``run_dir/stages/<name>/`` (see ``Stages``). Inside a stage, distillation and
evaluation also resume at row / task granularity through their own caches, and training from its
last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..cache import write_json_atomic
from ..prune import PRUNE_FILE
from .presets import Preset, TrainSet, get_preset
from .report_sections import sdd_sft_pairs
from .stages import Stages
from .trainer import axolotl_train, prune_keys, recipe_for, training_rows

#: preset fields hashed into the training stages' keys (identical for SFT and SDD)
TRAINING_FIELDS = {
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


@dataclass(frozen=True)
class _Run:
    """What every stage of one benchmark run needs."""

    preset: Preset
    stages: Stages
    echo: Callable[[str], None]
    root: Path | None  # data root (None when every set and task is synthetic)
    calibration: str | None  # resolved calibration source
    base_path: str  # local folder of the unpruned model
    #: only a non-default dtype enters the stage keys (and settings): float32 runs keep their keys
    dtype_key: dict[str, str]


def _data_root(data_root: str | os.PathLike | None, preset: Preset) -> Path | None:
    needs = any(ts.source != "synthetic" for ts in preset.train_sets) or any(
        not t.startswith("sdd_synth") for t in preset.eval_tasks
    )
    if not needs:
        return None
    from ..evaluate import resolve_data_root

    return resolve_data_root(data_root)


# --- evaluation (baseline, pruned, every fine-tuned and merged model) ---------------------------


def _evaluate_model(run: _Run, label: str, model: str, folder: Path) -> dict:
    """One lm-eval call per distinct limit (results are cached per task inside ``evaluate``)."""
    from ..evaluate import evaluate

    preset = run.preset
    groups: dict[int | None, list[str]] = {}
    for t in preset.eval_tasks:
        groups.setdefault(preset.eval_task_limits.get(t, preset.eval_limit), []).append(t)
    res: dict = {}
    for i, (limit, tasks) in enumerate(groups.items()):
        part = evaluate(
            model,
            tasks,
            limit=limit,
            num_fewshot={t: k for t, k in preset.eval_shots.items() if t in tasks} or None,
            batch_size=preset.eval_batch_size,
            data_root=run.root,
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


def _eval_stage(run: _Run, label: str, model: str, upstream: dict) -> dict:
    """Stage ``eval-<label>``: the eval results of ``model``, keyed by the stage it came from."""
    preset = run.preset
    inputs = {
        "tasks": preset.eval_tasks,
        "limit": preset.eval_limit,
        "task_limits": preset.eval_task_limits,
        "shots": preset.eval_shots,
        "data_root": str(run.root) if run.root else None,
        **run.dtype_key,
        "upstream": upstream,
    }
    run.stages.run(f"eval-{label}", inputs, partial(_evaluate_model, run, label, model))
    return json.loads((run.stages.folder(f"eval-{label}") / "eval_results.json").read_text())


# --- pruning -------------------------------------------------------------------------------------


def _record_pruning(pruned: Any, prune_seconds: float, folder: Path) -> dict:
    for name in (PRUNE_FILE, "heatmap.png", "README.md"):
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


def _prune_stage(run: _Run) -> tuple[dict, dict]:
    """Stage ``prune``: the call the Axolotl plugin makes for the training recipe's ``sdd_prune*``
    keys (:func:`.trainer.prune_keys`); returns ``(stage meta, inputs)``.

    ``prune()`` is content-addressed (model, settings, calibration content, code version), so it is
    reused when nothing changed, and its folder name keys every downstream stage: a changed pruning
    recomputes everything that depends on it."""
    from ..axolotl.args import parse_sdd_args
    from ..axolotl.recipe import prune_kwargs
    from ..prune.stage import prune

    run.echo("[prune] scoring and pruning (reused when cached) ...")
    t_prune = time.time()
    pruned = prune(run.base_path, **prune_kwargs(parse_sdd_args(prune_keys(run.preset, run.calibration))))
    prune_seconds = round(time.time() - t_prune, 1)
    inputs = {"pruned_model": Path(pruned.out_dir).name}
    meta = run.stages.run("prune", inputs, partial(_record_pruning, pruned, prune_seconds))
    if not meta["cached"]:
        meta["seconds"] = prune_seconds  # the work happened in prune(), before the stage
    return meta, inputs


# --- per fine-tuning set: data, distillation, training ------------------------------------------


def _write_rows(ts: TrainSet, root: Path | None, folder: Path) -> dict:
    from ..data.synthetic import write_jsonl

    path = write_jsonl(training_rows(ts, root), folder / f"{ts.name}.jsonl")
    return {"path": str(path), "rows": ts.rows}


def _data_stage(run: _Run, ts: TrainSet) -> tuple[dict, Path]:
    """Stage ``data-<set>``: the set's chat rows as JSONL; returns ``(inputs, data file)``."""
    inputs = {"set": ts.model_dump(), "root": str(run.root) if run.root else None}
    meta = run.stages.run(f"data-{ts.name}", inputs, partial(_write_rows, ts, run.root))
    return inputs, Path(meta["summary"]["path"])


def _distill_rows(run: _Run, ts: TrainSet, data_file: Path, folder: Path) -> dict:
    from ..distill.stage import distill_dataset
    from ..interfaces import GenerationSettings

    res = distill_dataset(
        run.base_path,
        str(data_file),
        "messages",
        folder / "distilled.jsonl",
        template=ts.template,
        checker=ts.template,
        settings=GenerationSettings(
            max_new_tokens=run.preset.distill_max_new_tokens,
            batch_size=run.preset.distill_batch_size,
            extra=dict(run.dtype_key),
        ),
        retries=run.preset.distill_retries,
    )
    return dict(res.report)


def _distill_stage(run: _Run, ts: TrainSet, data_inputs: dict, data_file: Path) -> tuple[dict, dict]:
    """Stage ``distill-<set>``: the teacher's rewrites and their stats; returns ``(inputs, stats)``."""
    preset = run.preset
    inputs = {
        "data": data_inputs,
        "teacher": preset.model,
        "max_new_tokens": preset.distill_max_new_tokens,
        "batch_size": preset.distill_batch_size,
        **({"retries": preset.distill_retries} if preset.distill_retries else {}),
        **run.dtype_key,
    }
    meta = run.stages.run(f"distill-{ts.name}", inputs, partial(_distill_rows, run, ts, data_file))
    return inputs, meta["summary"]


def _train(run: _Run, ts: TrainSet, mode: str, data_file: Path, folder: Path) -> dict:
    recipe = recipe_for(
        run.preset, ts, data_file, folder, distill=(mode == "sdd"), calibration=run.calibration
    )
    adapter = axolotl_train(recipe, folder)
    manifest = adapter / "sdd_run.json"
    info = json.loads(manifest.read_text()) if manifest.is_file() else {}
    return {"adapter": str(adapter), "plugin": info.get("prune", {}), "distill": info.get("distill")}


def _train_stage(
    run: _Run, ts: TrainSet, mode: str, data_file: Path, upstream: dict[str, dict | None]
) -> tuple[str, dict]:
    """Stage ``<sft|sdd>-<set>`` training through ``axolotl train``; returns ``(adapter, inputs)``.

    ``upstream``: the inputs of the data, prune and (SDD only) distill stages."""
    inputs = {
        **upstream,
        "training": run.preset.model_dump(include=TRAINING_FIELDS),
        **run.dtype_key,
    }
    meta = run.stages.run(f"train-{mode}-{ts.name}", inputs, partial(_train, run, ts, mode, data_file))
    return meta["summary"]["adapter"], inputs


# --- merge and speculative decoding --------------------------------------------------------------


def _merge(adapters: list[str], folder: Path) -> dict:
    from ..merge import merge_models

    out = merge_models(adapters, method="slerp", t=0.5, out=folder / "model")
    return {"model": str(out)}


def _merge_stage(run: _Run, labels: list[str], adapters: list[str]) -> tuple[str, dict]:
    """Stage ``merge-sdd``: SLERP (t = 0.5) of two SDD models; returns ``(model, inputs)``."""
    inputs = {"models": [run.stages.records[f"train-{x}"]["key"] for x in labels], "t": 0.5}
    meta = run.stages.run("merge-sdd", inputs, partial(_merge, adapters))
    return meta["summary"]["model"], inputs


def _measure_specdec(run: _Run, adapter: str, folder: Path) -> dict:
    from ..specdec import default_prompts, measure_specdec

    result = measure_specdec(
        run.base_path,
        adapter,
        prompts=default_prompts()[: run.preset.specdec_prompts],
        max_new_tokens=run.preset.specdec_max_new_tokens,
        out=folder,
    )
    return result["summary"]


def _specdec_stage(run: _Run, label: str, adapter: str) -> dict:
    """Stage ``specdec-<label>``: the unpruned model as target, the fine-tuned ``adapter`` as draft."""
    inputs = {
        "draft": run.stages.records[f"train-{label}"]["key"],
        "prompts": run.preset.specdec_prompts,
        "max_new_tokens": run.preset.specdec_max_new_tokens,
    }
    return run.stages.run(f"specdec-{label}", inputs, partial(_measure_specdec, run, adapter))["summary"]


# --- results and report -------------------------------------------------------------------------


def write_results(results: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Add the recovery table and the SDD − SFT gaps to ``results``; write ``recovery.{json,png}`` and
    ``results.json`` into ``run_dir``."""
    from ..evaluate import paired_gap, plot_recovery, recovery_table

    evals = results["evals"]
    baseline = evals["baseline"]
    others = [dict(v, label=k) for k, v in evals.items() if k != "baseline"]
    table = recovery_table(others, dict(baseline, label="baseline"))
    write_json_atomic(run_dir / "recovery.json", table)
    plot_recovery(table, run_dir / "recovery.png")
    results["recovery"] = table
    for name, _, _ in sdd_sft_pairs(results["preset"], table):
        pair = (evals[f"sft-{name}"], evals[f"sdd-{name}"])
        results.setdefault("gaps", {})[name] = {
            "suite": paired_gap(*pair, baseline),
            "informative": paired_gap(*pair, baseline, only_informative=True),
        }
    write_json_atomic(run_dir / "results.json", results)
    return results


def _report_stage(run_dir: Path, results: dict[str, Any]) -> Path:
    """``results.json`` and the charts, then ``REPORT.md`` (written by ``sdd_plugin.report``)."""
    from ..report import build_report

    write_results(results, run_dir)
    return build_report(run_dir)


def run_recovery(
    preset: str | Preset = "quick",
    run_dir: str | os.PathLike = "runs/recovery",
    data_root: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
    **overrides: Any,
) -> dict[str, Any]:
    """Run (or resume) the recovery benchmark; returns the results dict also written to disk."""
    from ..models import resolve_dtype, resolve_model, warn_if_slow_dtype

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
    run = _Run(
        preset=preset,
        stages=stages,
        echo=echo,
        root=root,
        calibration=calibration,
        base_path=str(resolve_model(preset.model)),
        dtype_key={"dtype": preset.dtype} if preset.dtype != "float32" else {},
    )

    evals = {"baseline": _eval_stage(run, "baseline", run.base_path, {"model": preset.model})}
    prune_meta, prune_inputs = _prune_stage(run)
    evals["pruned"] = _eval_stage(run, "pruned", prune_meta["summary"]["pruned_model"], prune_inputs)

    adapters: dict[str, str] = {}
    distill_stats: dict[str, dict] = {}
    for ts in preset.train_sets:
        data_inputs, data_file = _data_stage(run, ts)
        distill_inputs, distill_stats[ts.name] = _distill_stage(run, ts, data_inputs, data_file)
        for mode in ("sft", "sdd"):
            label = f"{mode}-{ts.name}"
            upstream = {
                "data": data_inputs,
                "prune": prune_inputs,
                "distill": distill_inputs if mode == "sdd" else None,
            }
            adapters[label], train_inputs = _train_stage(run, ts, mode, data_file, upstream)
            evals[label] = _eval_stage(run, label, adapters[label], train_inputs)

    sdd_labels = [f"sdd-{ts.name}" for ts in preset.train_sets]
    if preset.merge and len(sdd_labels) >= 2:
        merged, merge_inputs = _merge_stage(run, sdd_labels[:2], [adapters[x] for x in sdd_labels[:2]])
        evals["merged-sdd"] = _eval_stage(run, "merged-sdd", merged, merge_inputs)

    specdec: dict[str, dict] = {}
    if preset.specdec_prompts > 0:
        specdec = {label: _specdec_stage(run, label, adapter) for label, adapter in adapters.items()}

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
    report = _report_stage(run_dir, results)
    echo(f"report: {report}")
    return results

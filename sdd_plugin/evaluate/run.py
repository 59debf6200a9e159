"""Evaluate a model with lm-eval on local or stock tasks, one cached result per (model, task, settings).

:func:`evaluate` loads the model once (a LoRA adapter on its base via lm-eval's ``peft=``), runs the
tasks one by one, and writes ``eval_results.json``/``.md``; :func:`load_results` reads one back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..cache import cache_dir, cache_lock, fingerprint, stable_hash, write_json_atomic, write_text_atomic
from ..checkpoints import ADAPTER_CONFIG, adapter_base, is_adapter
from ..models import DTYPES, warn_if_slow_dtype
from .local_data import PREP_VERSION, check_task_data, prepare_tasks, task_fingerprint
from .registry import TASKS, expand_tasks, higher_is_better, parse_shots, shots_for, validate_tasks
from .render import results_markdown
from .summary import summarise


def model_paths(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(base model folder, adapter folder or None)``; a LoRA folder names its base in adapter_config.json.

    Raises ``ValueError`` for an adapter whose config names no base and ``ModelNotFoundError``
    (a ``FileNotFoundError``) naming the adapter when its base cannot be found."""
    from ..models import ModelNotFoundError, resolve_model

    p = Path(model).expanduser()
    if not (p.is_dir() and is_adapter(p)):
        return resolve_model(model), None
    base = adapter_base(p)
    if not base:
        raise ValueError(
            f"{p / ADAPTER_CONFIG} names no base model (base_model_name_or_path missing, or not valid JSON)"
        )
    try:
        return resolve_model(base), p
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"adapter {p}: its base model {base!r} ({ADAPTER_CONFIG}): {exc}") from exc


def model_identity(model: str | os.PathLike) -> str:
    """What the result cache keys a model on: the :func:`~sdd_plugin.cache.fingerprint` of its base
    folder and of its adapter folder, if any (equal copies of a model share their results)."""
    base, adapter = model_paths(model)
    return fingerprint({"base": fingerprint(base), "adapter": fingerprint(adapter) if adapter else None})


def _check_limit(limit: Any) -> int | float | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise ValueError(f"limit must be a positive number of docs per task, got {limit!r}")
    return int(limit) if float(limit).is_integer() and limit >= 1 else float(limit)


#: rolling (perplexity) windows are up to the model's max length (8192 for the default model) and
#: lm-eval keeps the float32 log-softmax of a whole batch: cap a batch at this many window tokens
ROLLING_TOKENS_PER_BATCH = 8192


def rolling_batch_size(batch_size: int | str, max_length: int) -> int | str:
    """Batch size for a perplexity task: ``batch_size`` capped so batch × max_length ≤ the budget.

    One 8192-token window of a 49k-vocab model already needs ~3 GB of logits; batch 8 would need ~26.
    """
    if not isinstance(batch_size, int):
        return batch_size  # "auto": lm-eval measures it
    return max(1, min(batch_size, ROLLING_TOKENS_PER_BATCH // max(1, int(max_length))))


def _eval_one(lm, task: str, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed) -> dict:
    import lm_eval

    t0 = time.perf_counter()
    saved_bs = getattr(lm, "batch_size_per_gpu", None)
    if not higher_is_better(task) and saved_bs is not None:
        lm.batch_size_per_gpu = rolling_batch_size(saved_bs, lm.max_length)
    try:
        res = _simple_evaluate(
            lm_eval, lm, task, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed
        )
    except ConnectionError as exc:  # stock tasks fetch their data from the hub
        local = f" (or the local sdd_{task})" if f"sdd_{task}" in TASKS else ""
        raise FileNotFoundError(
            f"task {task} needs its dataset from the Hugging Face hub, which is unreachable: {exc}; "
            f"connect, or use a local task{local}"
        ) from exc
    finally:
        if saved_bs is not None:
            lm.batch_size_per_gpu = saved_bs
    seconds = time.perf_counter() - t0
    return summarise(task, res, shots, seconds)


def _simple_evaluate(lm_eval, lm, task, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed):
    with _git_hash_from_files():
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            num_fewshot=shots,
            limit=limit,
            task_manager=tm,
            log_samples=True,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
            bootstrap_iters=1000,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )


@contextmanager
def _git_hash_from_files():
    """Make lm-eval read the commit it records from ``.git`` instead of running ``git describe``.

    lm-eval runs ``git describe`` in the working directory without capturing its stderr, so outside
    a repository git prints "fatal: not a git repository" on the console. Its own fallback reads
    the hash from the ``.git`` folder, if any, silently; the recorded hash is not used here.
    """
    from lm_eval import evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    saved = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = lambda: get_commit_from_path(os.getcwd())
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = saved


def _task_manager(folder: Path, stock: bool = False):
    """lm-eval's task index of the rendered folder (+ the stock tasks, whose index is slow to build)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=stock)


def _load_lm(model: str | os.PathLike, batch_size: int | str, dtype: str = "float32"):
    from lm_eval.models.huggingface import HFLM

    base, adapter = model_paths(model)
    tok = adapter if adapter and (adapter / "tokenizer_config.json").is_file() else base
    return HFLM(
        pretrained=str(base),
        peft=str(adapter) if adapter else None,
        tokenizer=str(tok),
        device="cpu",
        dtype=dtype,
        batch_size=batch_size,
        trust_remote_code=False,
    )


def _chat_template_hash(model: str | os.PathLike) -> str | None:
    base, adapter = model_paths(model)
    for folder in (adapter, base):
        if folder is None:
            continue
        cfg = folder / "tokenizer_config.json"
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return stable_hash(jinja.read_text(encoding="utf-8"))
        if cfg.is_file():
            tmpl = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            if tmpl:
                return stable_hash(tmpl)
    return None


def _cached_result(cache_file: Path) -> dict | None:
    """A task's cached result (marked ``cached``), or None when there is none yet."""
    if not cache_file.is_file():
        return None
    r = json.loads(cache_file.read_text(encoding="utf-8"))
    r["cached"] = True
    return r


def evaluate(
    model: str | os.PathLike,
    tasks: str | Sequence[str],
    limit: int | float | None = None,
    num_fewshot: dict[str, int] | int | str | None = None,
    batch_size: int | str = 8,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 1234,
    use_cache: bool = True,
    dtype: str = "float32",
) -> dict:
    """Evaluate ``model`` on ``tasks`` with lm-eval; writes ``eval_results.json``/``.md`` into ``out``.

    ``model``: embedded name, HF folder, hub id, or a LoRA adapter folder (evaluated on its base via
    lm-eval's ``peft=``). ``num_fewshot``: one int for all tasks, ``{task: k}``, or None for the
    defaults (OpenLLM v1: ARC-C 25, HellaSwag 10, TruthfulQA 0, MMLU 5, WinoGrande 5, GSM8K 5,
    ARC-E 0). Each (model, task, limit, shots, settings) result is cached, so reruns are instant and
    an interrupted multi-task run resumes at the first unfinished task. ``dtype``: the weights'
    dtype (``bfloat16`` runs the CPU's bf16 matmuls; compare models only at the same dtype).
    """
    import lm_eval
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    warn_if_slow_dtype(dtype, "evaluation")
    tasks = expand_tasks(tasks)
    limit = _check_limit(limit)
    num_fewshot = parse_shots(num_fewshot)
    if isinstance(num_fewshot, int) and num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if isinstance(num_fewshot, dict):
        bad = [k for k in num_fewshot if k not in tasks]
        if bad:
            raise ValueError(
                f"shots given for task(s) not being evaluated: {', '.join(bad)} (tasks: {', '.join(tasks)})"
            )
        neg = [k for k, v in num_fewshot.items() if v < 0]
        if neg:
            raise ValueError(f"shots must be >= 0 for {', '.join(neg)}")
    if fewshot_as_multiturn and not apply_chat_template:
        raise ValueError("fewshot_as_multiturn needs apply_chat_template=True")
    validate_tasks(tasks)  # sdd_* names, before anything heavy
    base, adapter = model_paths(model)  # raises ModelNotFoundError (FileNotFoundError) early
    folder = prepare_tasks(tasks, data_root)
    tm = None
    stock = any(t not in TASKS and not t.startswith("sdd_mmlu_") for t in tasks)
    if stock:
        tm = _task_manager(folder, stock=True)
        validate_tasks(tasks, tm)  # stock names: checked against lm-eval's index

    ident = model_identity(model)
    chat_hash = _chat_template_hash(model) if apply_chat_template else None
    settings = {
        "apply_chat_template": bool(apply_chat_template),
        "fewshot_as_multiturn": bool(fewshot_as_multiturn),
        "chat_template_sha": chat_hash,
        "batch_size": batch_size,
        "seed": seed,
        "device": "cpu",
        "dtype": dtype,
    }
    version = getattr(lm_eval, "__version__", "unknown")
    results: dict[str, Any] = {}
    lm = None
    t_start = time.perf_counter()
    bar = tqdm(tasks, desc="sdd eval", unit="task")
    for task in bar:
        bar.set_postfix_str(task)
        shots = shots_for(task, num_fewshot)
        key = stable_hash(
            {
                "model": ident,
                "task": task,
                "task_files": task_fingerprint(folder, task),
                "limit": limit,
                "shots": shots,
                "chat": [settings["apply_chat_template"], settings["fewshot_as_multiturn"], chat_hash],
                "seed": seed,
                "lm_eval": version,
                "v": PREP_VERSION,
                # float32 results keep their old keys; any other dtype is its own result
                **({"dtype": dtype} if dtype != "float32" else {}),
            }
        )
        cache_file = cache_dir() / "eval_results" / f"{task}-{key}.json"
        r = _cached_result(cache_file) if use_cache else None
        if r is None:
            # one process runs a (model, task, settings) at a time; one that waited reuses its result
            with cache_lock(cache_file):
                r = _cached_result(cache_file) if use_cache else None
                if r is None:
                    if tm is None:
                        tm = _task_manager(folder, stock=stock)
                    if lm is None:
                        lm = _load_lm(model, batch_size, dtype)
                    r = _eval_one(lm, task, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed)
                    write_json_atomic(cache_file, r)
                    r["cached"] = False
        results[task] = r
    bar.close()

    report = {
        "model": str(model),
        "model_path": str(base),
        "adapter": str(adapter) if adapter else None,
        "tasks": results,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "settings": settings,
        "lm_eval_version": version,
        "data_root": str(check_task_data(tasks, data_root) or ""),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timing": {
            "total_seconds": round(time.perf_counter() - t_start, 2),
            "per_task_seconds": {t: r.get("seconds") for t, r in results.items()},
        },
    }
    if out is not None:
        out = Path(out)
        write_json_atomic(out / "eval_results.json", report)
        write_text_atomic(out / "eval_results.md", results_markdown(report))
    return report


def load_results(path: str | os.PathLike) -> dict:
    """Read an ``eval_results.json`` (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval_results.json"
    if not p.is_file():
        raise FileNotFoundError(f"no eval results at {p}")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "tasks" not in data:
        raise ValueError(f"{p} is not an eval_results.json (no 'tasks' key)")
    return data

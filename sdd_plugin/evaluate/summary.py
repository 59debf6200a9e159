"""One task's result row from lm-eval's output: primary metric, stderr, chance level, per-item scores.

Chance levels are computed over the evaluated docs: mean ``1/#choices`` for multiple choice,
mean ``#true/#choices`` for TruthfulQA mc2 (the expected mc2 of a uniform model), 0 for generation,
None for perplexity (``loglikelihood_rolling``) tasks.
"""

from __future__ import annotations

import math
from typing import Any

from .registry import LOWER_IS_BETTER_METRICS, TASKS, higher_is_better, primary_metric


def _pick_metric(task: str, res: dict) -> tuple[str, str, str]:
    metric, filt, label = primary_metric(task)
    if metric and f"{metric},{filt}" in res:
        return metric, filt, label
    for m in ("acc_norm" if metric == "acc_norm" else "acc", "exact_match", "acc", "mc2", "f1", "bleu"):
        for k in res:
            if k.startswith(f"{m},") and "stderr" not in k:
                return m, k.split(",", 1)[1], m
    for k, v in res.items():
        if "," in k and "stderr" not in k and isinstance(v, (int, float)):
            m, f = k.split(",", 1)
            return m, f, m
    raise ValueError(f"lm-eval returned no numeric metric for task {task}: {sorted(res)}")


def _chance_and_items(task: str, res: dict, metric: str, filt: str) -> tuple[float | None, list[float], int]:
    """Chance level over the evaluated docs, per-item values of the primary metric, and n."""
    samples = res.get("samples") or {}
    configs = res.get("configs") or {}
    chances: list[float] = []
    items: list[float] = []
    n = 0
    for sub, rows in samples.items():
        out_type = (configs.get(sub) or {}).get("output_type", "multiple_choice")
        for s in rows:
            if s.get("filter", "none") != filt:
                continue
            n += 1
            v = s.get(metric)
            if out_type == "loglikelihood_rolling" and isinstance(v, (list, tuple)) and len(v) == 2:
                v = _ppl_item(metric, float(v[0]), float(v[1]))  # (log-likelihood, #words or #bytes)
            if v is not None and _clean(v) is not None:
                items.append(float(v))
            doc = s.get("doc") or {}
            if out_type == "loglikelihood_rolling":
                chances.append(math.nan)  # no chance level for perplexity
            elif out_type != "multiple_choice":
                chances.append(0.0)
            elif "truthfulqa_mc2" in sub and "mc2_targets" in doc:
                labels = doc["mc2_targets"]["labels"]
                chances.append(sum(labels) / len(labels))
            else:
                k = len(s.get("arguments") or [])
                chances.append(1.0 / k if k else math.nan)
    chance = float(sum(chances) / len(chances)) if chances and not any(map(math.isnan, chances)) else None
    return chance, items, n


def _ppl_item(metric: str, loglik: float, count: float) -> float | None:
    """One document's value of a perplexity metric from its (log-likelihood, #words/#bytes) pair."""
    if count <= 0:
        return None
    if metric == "bits_per_byte":
        return -loglik / count / math.log(2)
    return math.exp(-loglik / count)


def _ppl_stderr(res: dict, metric: str, filt: str) -> float | None:
    """Delta-method standard error of a corpus-level perplexity metric over the evaluated docs.

    ``bits_per_byte`` = -Σll / Σbytes / ln 2 is a ratio estimator R = Σa/Σb; its variance is
    ≈ n/(n-1) · Σ(a_i − R·b_i)² / (Σb)² (the perplexities are exp(R), so ×exp(R)). lm-eval reports
    none for these aggregations.
    """
    pairs = []
    for rows in (res.get("samples") or {}).values():
        for s in rows:
            v = s.get(metric)
            if s.get("filter", "none") == filt and isinstance(v, (list, tuple)) and len(v) == 2:
                pairs.append((-float(v[0]), float(v[1])))
    n = len(pairs)
    total = sum(b for _, b in pairs)
    if n < 2 or total <= 0:
        return None
    r = sum(a for a, _ in pairs) / total
    se = math.sqrt(n / (n - 1) * sum((a - r * b) ** 2 for a, b in pairs)) / total
    return se / math.log(2) if metric == "bits_per_byte" else math.exp(r) * se


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict)):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def summarise(task: str, res: dict, shots, seconds: float) -> dict:
    """The result row of ``task`` from the output of ``lm_eval.simple_evaluate`` (with samples)."""
    top = res["results"].get(task)
    if top is None:
        raise RuntimeError(f"lm-eval returned no results for {task}: {sorted(res['results'])}")
    metric, filt, label = _pick_metric(task, top)
    chance, items, n = _chance_and_items(task, res, metric, filt)
    metrics = {k: _clean(v) for k, v in top.items() if "," in k and not isinstance(v, str)}
    stderr = _clean(top.get(f"{metric}_stderr,{filt}"))
    if not isinstance(stderr, (int, float)):  # "N/A" for the perplexity aggregations
        stderr = _ppl_stderr(res, metric, filt) if metric in LOWER_IS_BETTER_METRICS else None
    n_shot = res.get("n-shot", {})
    used_shots = n_shot.get(task)
    if used_shots is None:  # groups: the subtasks carry the shots
        vals = {v for k, v in n_shot.items() if k != task}
        used_shots = vals.pop() if len(vals) == 1 else shots
    return {
        "task": task,
        "metric": label,
        "metric_key": f"{metric},{filt}",
        "value": _clean(top[f"{metric},{filt}"]),
        "stderr": stderr,
        "n": n,
        "shots": used_shots,
        "chance": chance,
        "higher_is_better": higher_is_better(task)
        if task in TASKS
        else metric not in LOWER_IS_BETTER_METRICS,
        "metrics": metrics,
        "per_item": items,
        "source": "sdd" if task.startswith("sdd_") else "lm-eval",
        "seconds": round(seconds, 2),
    }

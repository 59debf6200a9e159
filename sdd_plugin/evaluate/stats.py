"""Recovery statistics: how much of a baseline's score a model keeps, per task and averaged.

Plain recovery is ``score / baseline`` (``baseline / score`` for lower-is-better tasks, which are
averaged apart from the accuracy tasks); above-chance recovery is ``(score - chance) / (baseline -
chance)``. :func:`paired_gap` compares two models on the same items with a paired bootstrap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .registry import higher_is_better


def recovery(
    score: float | None,
    baseline: float | None,
    chance: float | None = 0.0,
    higher_is_better: bool = True,
) -> tuple[float | None, float | None]:
    """``(score / baseline, (score - chance) / (baseline - chance))``; None where undefined.

    Above-chance recovery is undefined when the baseline is not above chance. For a lower-is-better
    metric (bits per byte) plain recovery is ``baseline / score`` (1.0 = as good as the baseline,
    < 1 = worse) and above-chance recovery is None (a perplexity task has no chance level).
    """
    if score is None or baseline is None:
        return None, None
    if not higher_is_better:
        return (baseline / score if score > 0 and baseline > 0 else None), None
    plain = score / baseline if baseline > 0 else None
    c = chance or 0.0
    above = (score - c) / (baseline - c) if baseline - c > 1e-12 else None
    return plain, above


def _label(res: dict, used: set[str]) -> str:
    m = str(res.get("label") or res.get("model", "model"))
    p = Path(m)
    label = p.name if (len(p.parts) > 1 or p.is_absolute()) else m
    base, i = label, 2
    while label in used:
        label, i = f"{base} ({i})", i + 1
    used.add(label)
    return label


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


#: a task informs above-chance recovery when its baseline beats chance by this many standard errors
INFORMATIVE_SIGMAS = 2.0


def informative(baseline_task: dict, chance: float | None) -> bool:
    """Whether the baseline is clearly above chance on a task: ``value - chance >=
    INFORMATIVE_SIGMAS x stderr``. Where it is not (a 135M model on MMLU or WinoGrande),
    ``(score - chance) / (baseline - chance)`` divides by noise: one item more or less moves a
    model's above-chance recovery by tens of points."""
    value, err = baseline_task.get("value"), baseline_task.get("stderr")
    if value is None or chance is None or err is None:
        return False
    return value - chance >= INFORMATIVE_SIGMAS * err and value - chance > 0


def paired_gap(
    first: dict,
    second: dict,
    baseline: dict,
    *,
    only_informative: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict | None:
    """Mean above-chance recovery of ``second`` minus ``first`` (points), with a paired bootstrap
    95 % interval: the items of each task are resampled with the same indices for both models
    (they answered the same documents), the baseline and chance level are fixed normalisers.
    Uses the tasks with per-item scores of equal length in both models and a baseline above chance
    (``only_informative``: only :func:`informative` ones). None when no task qualifies."""
    import numpy as np

    rng = np.random.default_rng(seed)
    used, boot, point = [], [], []
    for t, b in baseline.get("tasks", {}).items():
        ra, rb = first.get("tasks", {}).get(t), second.get("tasks", {}).get(t)
        if ra is None or rb is None or not higher_is_better(dict(b, task=t)):
            continue
        chance = b.get("chance") if b.get("chance") is not None else 0.0
        base = b.get("value")
        ia, ib = ra.get("per_item"), rb.get("per_item")
        if base is None or base - chance <= 1e-12 or not ia or not ib or len(ia) != len(ib):
            continue
        if only_informative and not informative(b, chance):
            continue
        xa, xb = np.asarray(ia, dtype=float), np.asarray(ib, dtype=float)
        idx = rng.integers(0, len(xa), size=(n_boot, len(xa)))
        boot.append((xb[idx].mean(1) - xa[idx].mean(1)) / (base - chance))
        point.append((xb.mean() - xa.mean()) / (base - chance))
        used.append(t)
    if not used:
        return None
    dist = 100 * np.mean(boot, axis=0)
    lo, hi = np.percentile(dist, [2.5, 97.5])
    return {
        "gap": round(float(100 * np.mean(point)), 2),
        "ci95": [round(float(lo), 2), round(float(hi), 2)],
        "tasks": used,
        "n_boot": n_boot,
    }


def recovery_table(results: dict | Sequence[dict], baseline_results: dict) -> dict:
    """Per task and averaged: score, baseline, chance, plain and above-chance recovery.

    ``results`` is one ``eval_results`` dict or a list of them (one per model); tasks are those
    both the model and the baseline have. Comparisons where n or shots differ are flagged.

    Each row carries ``higher_is_better``. The ``average`` (score, baseline, chance, recovery,
    above-chance recovery, ``n_tasks``) is over the higher-is-better tasks only (averaging bits per
    byte with accuracies is meaningless); the lower-is-better tasks' plain recovery
    (baseline / score) is averaged separately as ``lower_is_better_recovery`` over
    ``n_lower_is_better`` tasks (None when there are none).
    """
    if isinstance(results, dict):
        results = [results]
    used: set[str] = set()
    base_label = _label(baseline_results, set())
    btasks = baseline_results.get("tasks", {})
    table: dict[str, Any] = {"baseline": base_label, "tasks": [], "models": [], "warnings": []}
    order: list[str] = []
    for res in results:
        label = _label(res, used | {base_label})
        rows = {}
        for t, r in res.get("tasks", {}).items():
            b = btasks.get(t)
            if b is None:
                table["warnings"].append(f"{label}: task {t} is not in the baseline results; skipped")
                continue
            if r.get("metric") != b.get("metric"):
                table["warnings"].append(
                    f"{label}: task {t} metric {r.get('metric')} != baseline {b.get('metric')}"
                )
            for k in ("n", "shots"):
                if r.get(k) != b.get(k):
                    table["warnings"].append(f"{label}: task {t} {k}={r.get(k)} but baseline {k}={b.get(k)}")
            hib = higher_is_better(dict(b, task=t))
            chance = b.get("chance") if b.get("chance") is not None else r.get("chance")
            if not hib:
                chance = None
            plain, above = recovery(r.get("value"), b.get("value"), chance, higher_is_better=hib)
            rows[t] = {
                "metric": r.get("metric"),
                "higher_is_better": hib,
                "score": r.get("value"),
                "baseline": b.get("value"),
                "chance": chance,
                "recovery": plain,
                "above_chance_recovery": above,
                "informative": informative(b, chance) if hib else False,
            }
            if t not in order:
                order.append(t)
        hi = [v for v in rows.values() if v["higher_is_better"]]
        lo = [v for v in rows.values() if not v["higher_is_better"]]
        avg = {
            "score": _mean(v["score"] for v in hi),
            "baseline": _mean(v["baseline"] for v in hi),
            "chance": _mean(v["chance"] for v in hi),
            "recovery": _mean(v["recovery"] for v in hi),
            "above_chance_recovery": _mean(v["above_chance_recovery"] for v in hi),
            "n_tasks": len(hi),
            # only the tasks whose baseline is clearly above chance (see informative())
            "above_chance_recovery_informative": _mean(
                v["above_chance_recovery"] for v in hi if v["informative"]
            ),
            "n_informative": sum(1 for v in hi if v["informative"]),
            "lower_is_better_recovery": _mean(v["recovery"] for v in lo),
            "n_lower_is_better": len(lo),
        }
        table["models"].append({"model": label, "tasks": rows, "average": avg})
    table["tasks"] = order
    return table

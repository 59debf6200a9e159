"""Markdown tables and PNG charts of evaluation results and recovery tables."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..cache import write_json_atomic, write_text_atomic
from .registry import higher_is_better


def results_markdown(report: dict) -> str:
    """A Markdown table of one ``eval_results.json``."""
    s = report.get("settings", {})
    lines = [
        f"# Evaluation: `{report.get('model')}`",
        "",
        f"lm-eval {report.get('lm_eval_version')}, limit {report.get('limit')}, "
        f"chat template {'on' if s.get('apply_chat_template') else 'off'}"
        f"{' (few-shot as multi-turn)' if s.get('fewshot_as_multiturn') else ''}, seed {s.get('seed')}",
        "",
        "| task | metric | shots | n | score | ± stderr | chance |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lower = False
    for t, r in report.get("tasks", {}).items():
        hib = higher_is_better(dict(r, task=t))
        lower |= not hib
        lines.append(
            f"| {t} | {metric_label(r.get('metric'), hib)} | {r.get('shots')} | {r.get('n')} | "
            f"{format_score(r.get('value'), hib)} | {format_score(r.get('stderr'), hib)} | "
            f"{format_score(r.get('chance'), hib)} |"
        )
    if lower:
        lines += ["", LOWER_NOTE]
    return "\n".join(lines) + "\n"


LOWER_NOTE = "↓ = lower is better (bits per byte: plain numbers, not %; no chance level)."


def percent(v: Any, digits: int = 1) -> str:
    """A fraction as ``"40.0%"`` (``"–"`` for None)."""
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def format_score(v: Any, higher_is_better: bool = True) -> str:
    """A score for tables: accuracies as ``"40.0%"``, lower-is-better metrics as ``"1.234"``."""
    if higher_is_better:
        return percent(v)
    return "–" if v is None else f"{v:.3f}"


def metric_label(metric: Any, higher_is_better: bool = True) -> str:
    """The metric name, marked ``↓`` when lower is better."""
    return f"{metric}" if higher_is_better else f"{metric} ↓"


def recovery_markdown(table: dict) -> str:
    """Markdown of a recovery table: one block per model, tasks as rows, an average row."""
    lines = [
        f"# Recovery against `{table['baseline']}`",
        "",
        "plain recovery = score / baseline; above-chance recovery = (score − chance) / (baseline − chance)",
        "",
    ]
    if any(not r.get("higher_is_better", True) for m in table["models"] for r in m["tasks"].values()):
        lines += [
            "Tasks marked ↓ (bits per byte) are lower-is-better: their plain recovery is baseline / score "
            "(100% = as good as the baseline), they have no chance level and no above-chance recovery, "
            "and they are not in the **average** row (over the higher-is-better tasks) but in their own "
            "row.",
            "",
        ]
    for m in table["models"]:
        lines += [
            f"## {m['model']}",
            "",
            "| task | metric | chance | baseline | score | recovery | above-chance recovery |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for t in table["tasks"]:
            r = m["tasks"].get(t)
            if r is None:
                continue
            hib = r.get("higher_is_better", True)
            lines.append(
                f"| {t} | {metric_label(r['metric'], hib)} | {format_score(r['chance'], hib)} | "
                f"{format_score(r['baseline'], hib)} | {format_score(r['score'], hib)} | "
                f"{percent(r['recovery'])} | {percent(r['above_chance_recovery'])} |"
            )
        a = m["average"]
        if a.get("n_tasks", 0) or not a.get("n_lower_is_better"):
            lines.append(
                f"| **average** ({a['n_tasks']} tasks) | | {percent(a['chance'])} | {percent(a['baseline'])} | "
                f"{percent(a['score'])} | **{percent(a['recovery'])}** | **{percent(a['above_chance_recovery'])}** |"
            )
        if a.get("n_lower_is_better"):
            lines.append(
                f"| **lower-is-better average** ({a['n_lower_is_better']} tasks) | ↓ | | | | "
                f"**{percent(a['lower_is_better_recovery'])}** | – |"
            )
        lines.append("")
    if table.get("warnings"):
        lines += ["Warnings:", ""] + [f"- {w}" for w in table["warnings"]] + [""]
    return "\n".join(lines)


def plot_recovery(table: dict, path: str | os.PathLike) -> Path:
    """Bars per task: scores (baseline vs each model, chance marked), recovery % per task.

    Lower-is-better tasks (bits per byte) get their own panel of raw values (no chance line) and
    appear in the recovery panel as ``task ↓`` with plain recovery = baseline / score only; the
    ``average`` column is over the higher-is-better tasks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = table["models"]

    def hib(t: str) -> bool:
        return all(m["tasks"][t].get("higher_is_better", True) for m in models if t in m["tasks"])

    hi_tasks = [t for t in table["tasks"] if hib(t)]
    lo_tasks = [t for t in table["tasks"] if not hib(t)]
    score_cols = hi_tasks + ["average"] if hi_tasks or not lo_tasks else []
    rec_cols = score_cols + lo_tasks
    rec_names = score_cols + [f"{t} ↓" for t in lo_tasks]
    panels = (["scores"] if score_cols else []) + (["lower"] if lo_tasks else []) + ["recovery"]
    heights = {"scores": 1.0, "lower": 0.8, "recovery": 1.0}
    width = max(6.0, 1.6 * len(rec_cols) + 2) + 3.5
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(width, sum(3.75 * heights[p] for p in panels)),
        gridspec_kw={"height_ratios": [heights[p] for p in panels]},
        squeeze=False,
    )
    ax = dict(zip(panels, axes[:, 0]))

    def get(m: dict, t: str, key: str) -> float:
        r = m["average"] if t == "average" else m["tasks"].get(t, {})
        v = r.get(key)
        return float("nan") if v is None else float(v)

    def labels(vals: list[float]) -> list[str]:
        return ["" if math.isnan(v) else f"{v:.0f}" for v in vals]

    k = len(models) + 1
    w = 0.8 / k

    def value_bars(a, cols: list[str], scale: float) -> np.ndarray:
        x = np.arange(len(cols))
        base = [scale * get(models[0], t, "baseline") for t in cols] if models else [math.nan] * len(cols)
        bars = a.bar(x - 0.4 + w / 2, base, w, label=f"baseline: {table['baseline']}", color="0.55")
        if scale == 1.0:  # raw values (bits per byte): print them
            a.bar_label(bars, fmt="%.3f", fontsize=7)
        for i, m in enumerate(models, 1):
            vals = [scale * get(m, t, "score") for t in cols]
            bars = a.bar(x - 0.4 + w / 2 + i * w, vals, w, label=m["model"], color=f"C{i - 1}")
            if scale == 1.0:  # raw values (bits per byte): print them
                a.bar_label(bars, fmt="%.3f", fontsize=7)
        return x

    if "scores" in ax:
        a = ax["scores"]
        x = value_bars(a, score_cols, 100.0)
        if models:
            chance = [100 * get(models[0], t, "chance") for t in score_cols]
            a.hlines(chance, x - 0.42, x + 0.42, colors="k", linestyles="dashed", linewidth=1, label="chance")
        a.set_ylabel("score (%)")
        a.set_title("Scores per task (higher is better)")
        a.set_xticks(x, score_cols, rotation=20, ha="right")
        a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if "lower" in ax:
        a = ax["lower"]
        x = value_bars(a, lo_tasks, 1.0)
        metrics = sorted(
            {str(m["tasks"][t].get("metric")) for m in models for t in lo_tasks if t in m["tasks"]}
        )
        a.set_ylabel(" / ".join(metrics) or "value")
        a.set_title("Lower is better (no chance level)")
        a.margins(y=0.12)  # room for the value labels
        a.set_xticks(x, lo_tasks, rotation=20, ha="right")
        a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    a = ax["recovery"]
    x = np.arange(len(rec_cols))
    w2 = 0.8 / max(1, 2 * len(models))
    for i, m in enumerate(models):
        off = x - 0.4 + w2 / 2 + 2 * i * w2
        vals = [100 * get(m, t, "recovery") for t in rec_cols]
        bars = a.bar(off, vals, w2, label=f"{m['model']} (plain)", color=f"C{i}")
        a.bar_label(bars, labels=labels(vals), fontsize=7)
        vals = [100 * get(m, t, "above_chance_recovery") for t in rec_cols]
        if all(math.isnan(v) for v in vals):  # only lower-is-better tasks: no above-chance bars
            continue
        bars = a.bar(
            off + w2, vals, w2, hatch="//", color=f"C{i}", alpha=0.45, label=f"{m['model']} (above chance)"
        )
        a.bar_label(bars, labels=labels(vals), fontsize=7)
    a.axhline(100, color="k", linewidth=0.8)
    a.set_ylabel("recovery (%)")
    title = f"Recovery vs {table['baseline']}"
    if lo_tasks:
        title += "\n(↓ tasks: baseline / score; average = higher-is-better tasks)"
    a.set_title(title)
    a.set_xticks(x, rec_names, rotation=20, ha="right")
    a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_recovery(table: dict, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``recovery.json``, ``recovery.md`` and ``recovery.png`` into ``out``."""
    out = Path(out)
    paths = {"json": out / "recovery.json", "md": out / "recovery.md", "png": out / "recovery.png"}
    write_json_atomic(paths["json"], table)
    write_text_atomic(paths["md"], recovery_markdown(table))
    plot_recovery(table, paths["png"])
    return paths

"""The recovery benchmark's page: settings, scores, SDD − SFT gaps, distillation, spec-dec, stage times.

``render_recovery_report(results, run_dir, base)`` turns a benchmark's ``results.json`` (with the
recovery table and gaps ``write_results`` adds) into the Markdown that ``sdd_plugin.report`` writes
as the run's ``REPORT.md``; it reads nothing else, so the page is the same whenever it is rendered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: the keys of a recovery benchmark's ``results.json`` the page needs
RESULT_KEYS = ("preset", "evals", "prune", "distill", "specdec", "stages", "wall_seconds", "recovery")


def is_recovery_results(data: Any) -> bool:
    """Whether ``data`` (a loaded ``results.json``) is a recovery benchmark's results."""
    return isinstance(data, dict) and all(k in data for k in RESULT_KEYS)


def sdd_sft_pairs(preset: dict, table: dict) -> Iterator[tuple[str, dict, dict]]:
    """``(set name, SFT average, SDD average)`` for each set whose SFT and SDD models both have an
    above-chance recovery in the recovery ``table``."""
    by = {m["model"]: m["average"] for m in table["models"]}
    for ts in preset["train_sets"]:
        sft, sdd = by.get(f"sft-{ts['name']}"), by.get(f"sdd-{ts['name']}")
        if (
            sft
            and sdd
            and sft["above_chance_recovery"] is not None
            and sdd["above_chance_recovery"] is not None
        ):
            yield ts["name"], sft, sdd


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _header(results: dict) -> list[str]:
    from ..models import machine_summary

    preset, prune = results["preset"], results["prune"]
    return [
        f"# Recovery benchmark — preset `{preset['name']}`",
        "",
        f"Model `{preset['model']}`, {preset['num_blocks']} blocks removed by `{preset['metric']}` "
        f"(blocks {prune['removed_blocks']}, {prune['num_layers_before']} → "
        f"{prune['num_layers_after']}). Preset `{preset['name']}`"
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
    ]


def _scores(results: dict, figure: str) -> list[str]:
    """The scores table (lower-is-better tasks as plain numbers, out of the average) and the chart."""
    from ..evaluate import format_score, higher_is_better, metric_label

    table, baseline = results["recovery"], results["evals"]["baseline"]
    tasks = table["tasks"]
    hib = {t: higher_is_better(dict(baseline["tasks"][t], task=t)) for t in tasks}

    def cell(v: float | None, t: str) -> str:
        return _pct(v) if hib[t] else format_score(v, False)

    heads = [
        t if hib[t] else f"{t} ({metric_label(baseline['tasks'][t].get('metric'), False)})" for t in tasks
    ]
    lines = [
        "## Scores",
        "",
        "| model | "
        + " | ".join(heads)
        + " | average | recovery | above-chance recovery | … informative tasks |",
        "|---" * (len(tasks) + 5) + "|",
    ]
    hi = [t for t in tasks if hib[t]]
    b_avg = sum(baseline["tasks"][t]["value"] for t in hi) / len(hi) if hi else None
    lines.append(
        "| baseline | "
        + " | ".join(cell(baseline["tasks"][t]["value"], t) for t in tasks)
        + (f" | {_pct(b_avg)} | 100 | 100 | 100 |" if hi else " | – | – | – | – |")
    )
    for m in table["models"]:
        avg = m["average"]
        lines.append(
            f"| {m['model']} | "
            + " | ".join(cell(m["tasks"].get(t, {}).get("score"), t) for t in tasks)
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
        f"![recovery]({figure})",
        "",
    ]
    return lines


def _gaps(results: dict) -> list[str]:
    """The SDD − SFT recovery gap per set, with the paired-bootstrap intervals of ``results['gaps']``."""
    from ..evaluate import INFORMATIVE_SIGMAS

    preset, table = results["preset"], results["recovery"]
    intervals = results.get("gaps", {})
    lines, gaps = [], []
    pairs = {name: (sft, sdd) for name, sft, sdd in sdd_sft_pairs(preset, table)}
    by = {m["model"]: m["average"] for m in table["models"]}
    for ts in preset["train_sets"]:
        name = ts["name"]
        if name in pairs:
            sft, sdd = pairs[name]
            gap = 100 * (sdd["above_chance_recovery"] - sft["above_chance_recovery"])
            gaps.append(gap)
            ci = intervals.get(name, {}).get("suite")
            inf = intervals.get(name, {}).get("informative")
            text = f"- **{name}**: SDD − SFT above-chance recovery = {gap:+.1f} points"
            if ci:
                text += f" (paired bootstrap 95 % interval {ci['ci95'][0]:+.1f} to {ci['ci95'][1]:+.1f})"
            if inf:
                text += (
                    f"; over the informative tasks ({', '.join(inf['tasks'])}) {inf['gap']:+.1f} "
                    f"({inf['ci95'][0]:+.1f} to {inf['ci95'][1]:+.1f})"
                )
            lines.append(text + ".")
        sft, sdd = by.get(f"sft-{name}"), by.get(f"sdd-{name}")
        if (
            sft
            and sdd
            and sft.get("lower_is_better_recovery") is not None
            and sdd.get("lower_is_better_recovery") is not None
        ):
            lgap = 100 * (sdd["lower_is_better_recovery"] - sft["lower_is_better_recovery"])
            lines.append(
                f"- **{name}**: SDD − SFT recovery on the ↓ (bits-per-byte) tasks = {lgap:+.1f} points."
            )
    if gaps:
        mean_gap = sum(gaps) / len(gaps)
        verdict = "meets" if mean_gap >= 10 else f"misses by {10 - mean_gap:.1f} points"
        lines.append(f"- Mean SDD − SFT gap {mean_gap:+.1f} points: {verdict} the +10-point target.")
        informative_tasks = [
            t
            for t in table["tasks"]
            if any(m["tasks"].get(t, {}).get("informative") for m in table["models"])
        ]
        lines.append(
            "- The suite average includes tasks where the baseline is not clearly above chance "
            f"(< {INFORMATIVE_SIGMAS:g} standard errors): there (score − chance) / (baseline − chance) "
            "divides by noise. Informative tasks in this run: "
            + (", ".join(informative_tasks) or "none")
            + ". Intervals resample each task's items with the same indices for SFT and SDD."
        )
    return lines


def _distillation(results: dict) -> list[str]:
    lines = [
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
    return lines + [
        "",
        "The NLL columns are the teacher's mean per-token NLL of the SFT targets (original responses) "
        "and of the SDD targets (distilled): lower = closer to the model's own distribution.",
        "",
    ]


def _specdec(results: dict) -> list[str]:
    if not results["specdec"]:
        return []
    lines = [
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
    return lines + [
        "",
        "Speedups are ratios of two timings in the same run on a shared 2-core CPU: noisy.",
        "",
    ]


def _stage_times(results: dict) -> list[str]:
    lines = ["## Time per stage", "", "| stage | seconds | cached now |", "|---|---|---|"]
    for k, v in results["stages"].items():
        lines.append(f"| {k} | {v['seconds']:.0f} | {v['cached']} |")
    lines += ["", f"Wall time of this invocation: {results['wall_seconds']:.0f} s.", ""]
    warnings = results["recovery"].get("warnings")
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    return lines


def render_recovery_report(
    results: dict[str, Any], run_dir: str | os.PathLike, base: str | os.PathLike
) -> str:
    """The benchmark's Markdown page; its chart link (``run_dir/recovery.png``) is relative to ``base``."""
    figure = Path(os.path.relpath(Path(run_dir) / "recovery.png", base)).as_posix()
    lines = (
        _header(results)
        + _scores(results, figure)
        + _gaps(results)
        + _distillation(results)
        + _specdec(results)
        + _stage_times(results)
    )
    return "\n".join(lines)

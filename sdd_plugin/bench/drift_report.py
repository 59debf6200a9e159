"""The forgetting-curve study's results: curves, paired intervals, consistency checks, REPORT.md.

:func:`summarise` turns the study's raw per-document and per-item scores into KL recovery, bits
per byte and accuracy per arm and checkpoint, with bootstrap intervals (over documents / items,
paired where two models are compared); :func:`write_report` writes ``results.json``,
``curves.png`` and ``REPORT.md`` into the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cache import write_json_atomic
from ..models import machine_summary

#: display names of the measured document sets
DOC_SET_TITLES = {
    "instruct": "unpruned model's answers to held-out Dolly instructions",
    "wikitext": "WikiText-2 test passages",
    "gsm8k": "GSM8K test solutions (in-domain)",
}
#: accuracy metric reported per task (lm-eval's primary one)
CHOICE_METRIC = {"arc_easy": "acc", "hellaswag": "acc_norm"}
#: the issue's target at the last checkpoint: SDD's KL recovery on held-out answers >= SFT's + this
TARGET_POINTS = 10.0


def _bpb_interval(
    docs: list[list[float]], n_boot: int, seed: int = 0, other: list | None = None
) -> list[float]:
    """95 % bootstrap interval of bits per byte over documents (``other``: of the paired difference)."""
    import numpy as np

    arr = np.asarray(docs, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n_boot, len(arr)))

    def bpb(a: np.ndarray, sel: np.ndarray) -> np.ndarray:
        return a[sel, 2].sum(1) / a[sel, 4].sum(1) / np.log(2)

    dist = bpb(arr, idx) if other is None else bpb(arr, idx) - bpb(np.asarray(other, dtype=float), idx)
    return [float(v) for v in np.percentile(dist, [2.5, 97.5])]


def _measure_summary(scores: dict, steps: list[int], compared: list[str], n_boot: int) -> dict[str, Any]:
    from ..evaluate.divergence import DocScore, bits_per_byte, kl_recovery, mean_kl, paired_recovery_gap

    out: dict[str, Any] = {}
    pruned_scores = scores["pruned"]
    for name in pruned_scores:
        pruned = pruned_scores[name]["pruned"]
        entry: dict[str, Any] = {
            "documents": len(pruned),
            "tokens": int(sum(d[1] for d in pruned)),
            "unpruned_bpb": bits_per_byte([DocScore(*d) for d in pruned], reference=True),
            "arms": {},
            "gaps": {},
            "bpb_gaps": {},
        }
        for arm, per_set in scores.items():
            rows = {}
            for label, docs in per_set[name].items():
                band = paired_recovery_gap(docs, pruned, pruned, n_boot=n_boot)["ci95"]
                rows[label] = {
                    "kl": mean_kl(docs),
                    "recovery": kl_recovery(docs, pruned),
                    "recovery_ci95": [band[0] / 100, band[1] / 100],
                    "bpb": bits_per_byte([DocScore(*d) for d in docs]),
                    "bpb_ci95": _bpb_interval(docs, n_boot),
                }
            entry["arms"][arm] = rows
        a, b = compared
        if a in scores and b in scores:
            for s in steps:
                da, db = scores[a][name][str(s)], scores[b][name][str(s)]
                entry["gaps"][str(s)] = paired_recovery_gap(da, db, pruned, n_boot=n_boot)
                bpb_a, bpb_b = entry["arms"][a][str(s)]["bpb"], entry["arms"][b][str(s)]["bpb"]
                entry["bpb_gaps"][str(s)] = {
                    "gap": bpb_a - bpb_b,
                    "ci95": _bpb_interval(da, n_boot, other=db),
                }
        out[name] = entry
    return out


def _choice_summary(choices: dict, steps: list[int], compared: list[str], n_boot: int) -> dict[str, Any]:
    from ..evaluate.choices import paired_accuracy_gap

    out: dict[str, Any] = {}
    for task, by_label in choices.items():
        metric = CHOICE_METRIC.get(task, "acc")
        key = "correct" if metric == "acc" else f"correct_{metric.removeprefix('acc_')}"
        entry = {
            "metric": metric,
            "items": {label: r["items"] for label, r in by_label.items()},
            "scores": {label: r[metric] for label, r in by_label.items()},
            "gaps": {},
        }
        a, b = compared
        for s in steps:
            ra, rb = by_label.get(f"{a}@{s}"), by_label.get(f"{b}@{s}")
            if ra and rb:
                entry["gaps"][str(s)] = paired_accuracy_gap(ra[key], rb[key], n_boot=n_boot)
        out[task] = entry
    return out


def _checks(raw: dict, measures: dict) -> dict[str, Any]:
    """Consistency of the run: what must hold by construction, each with the values checked."""
    steps = raw["preset"]["checkpoints"]
    checks: dict[str, Any] = {}
    recs = [measures[n]["arms"]["pruned"]["pruned"]["recovery"] for n in measures]
    checks["pruned_recovery_is_zero"] = {"ok": all(abs(r) < 1e-12 for r in recs), "values": recs}
    for arm, t in raw["training"].items():
        got = sorted(int(s) for s in raw["scores"][arm]["instruct"])
        saved = sorted(int(s) for s in t["checkpoints"])
        checks[f"{arm}_checkpoints"] = {"ok": got == steps and saved == steps, "steps": got}
    orders = {arm: t["order"]["order"] for arm, t in raw["training"].items()}
    rows = raw["preset"]["rows"]
    if orders:
        first = next(iter(orders.values()))
        checks["same_rows_same_order"] = {
            "ok": all(o == first for o in orders.values())
            and sorted(x for x in first if x is not None) == list(range(rows)),
            "arms": list(orders),
            "rows": len(first),
        }
    plugin = (raw["training"].get("sdd") or {}).get("plugin_distill") or {}
    if plugin.get("datasets"):
        accepted = plugin["datasets"][0].get("report", {}).get("accepted")
        checks["plugin_used_the_study_rewrites"] = {
            "ok": accepted == raw["distill"].get("accepted"),
            "plugin_accepted": accepted,
            "study_accepted": raw["distill"].get("accepted"),
        }
    return checks


def unit_costs(raw: dict[str, Any]) -> dict[str, Any]:
    """What one unit of each kind of work cost in this run (for sizing other presets): seconds per
    optimizer step (the trainer's loop, no start-up), generated tokens/s of the distillation,
    token passes/s of the KL measurement (every model and the reference over every document
    token), and multiple-choice items/s (model load included)."""
    stages, steps = raw.get("stages", {}), raw["preset"]["checkpoints"][-1]
    out: dict[str, Any] = {
        "train_seconds_per_step": {
            a: round(t["train_runtime"] / steps, 2)
            for a, t in raw["training"].items()
            if t.get("train_runtime")
        },
        "distill_generated_tokens": raw["distill"].get("generated_tokens"),
        "distill_tokens_per_s": raw["distill"].get("tokens_per_s"),
    }
    tokens = sum((raw.get("documents", {}).get("tokens") or {}).values())
    passes = {}
    for arm, per_set in raw["scores"].items():
        seconds = stages.get(f"measure-{arm}", {}).get("seconds")
        if seconds and tokens:
            passes[arm] = round((len(per_set["instruct"]) + 1) * tokens / seconds, 1)
    out["measure_token_passes_per_s"] = passes
    items: dict[str, list[float]] = {}
    for task, by_label in raw["choices"].items():
        for label, r in by_label.items():
            seconds = stages.get(f"choices-{label.replace('@', '-')}-{task}", {}).get("seconds")
            if seconds:
                items.setdefault(task, []).append(r["items"] / seconds)
    out["choice_items_per_s"] = {t: round(sum(v) / len(v), 2) for t, v in items.items()}
    return out


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus ``measures``, ``accuracy``, ``checks``, ``unit_costs`` and the ``target`` verdict."""
    preset = raw["preset"]
    steps, compared, n_boot = preset["checkpoints"], raw["compared"], preset["bootstrap"]
    measures = _measure_summary(raw["scores"], steps, compared, n_boot)
    accuracy = _choice_summary(raw["choices"], raw["resolved"]["accuracy_steps"], compared, n_boot)
    last = str(steps[-1])
    gap = measures["instruct"]["gaps"].get(last)
    target: dict[str, Any] = {"points": TARGET_POINTS}
    if gap:
        target["kl_gap"] = gap["gap"]
        target["kl_ci95"] = gap["ci95"]
        target["kl_met"] = gap["gap"] >= TARGET_POINTS and gap["ci95"][0] > 0
    final = str(raw["resolved"]["accuracy_steps"][-1])
    target["accuracy"] = {t: a["gaps"].get(final, {}).get("gap") for t, a in accuracy.items()}
    target["accuracy_met"] = all(v is not None and v >= 0 for v in target["accuracy"].values())
    target["met"] = bool(target.get("kl_met")) and target["accuracy_met"]
    return {
        **raw,
        "measures": measures,
        "accuracy": accuracy,
        "target": target,
        "checks": _checks(raw, measures),
        "unit_costs": unit_costs(raw),
    }


# ------------------------------------------------------------------------------------- curves


def _log_steps(ax, steps: list[int]) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("optimizer steps")
    ax.grid(alpha=0.3)


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Each measure against optimizer steps (log x), one line per arm with its 95 % band; the
    pruned model (step 0) as a dashed line; accuracy at the measured steps; training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["preset"]["checkpoints"]
    measures = results["measures"]
    panels = [(n, "recovery", "KL recovery") for n in measures] + [("gsm8k", "bpb", "bits per byte")]
    fig, grid = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = list(grid.flat)
    colors = {"sft": "tab:blue", "sdd": "tab:red", "pruned": "0.4"}
    for ax, (name, key, label) in zip(axes, panels):
        entry = measures[name]
        for arm, rows in entry["arms"].items():
            if arm == "pruned":
                ax.axhline(rows["pruned"][key], color=colors["pruned"], ls="--", lw=1, label="pruned")
                continue
            ys = [rows[str(s)][key] for s in steps]
            lo = [rows[str(s)][f"{key}_ci95"][0] for s in steps]
            hi = [rows[str(s)][f"{key}_ci95"][1] for s in steps]
            ax.plot(steps, ys, marker="o", color=colors.get(arm), label=arm.upper())
            ax.fill_between(steps, lo, hi, color=colors.get(arm), alpha=0.2, lw=0)
        if key == "bpb":
            ax.axhline(entry["unpruned_bpb"], color="k", ls=":", lw=1, label="unpruned")
        _log_steps(ax, steps)
        ax.set_ylabel(label)
        ax.set_title(f"{name}: {label}", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[len(panels)]
    acc_steps = results["resolved"]["accuracy_steps"]
    for (task, entry), marker in zip(results["accuracy"].items(), "os^v"):
        n = max(entry["items"].values())
        for arm in results["training"]:
            ys = [entry["scores"].get(f"{arm}@{s}") for s in acc_steps]
            if None in ys:
                continue
            err = [1.96 * (y * (1 - y) / n) ** 0.5 for y in ys]
            ax.errorbar(
                acc_steps,
                ys,
                yerr=err,
                marker=marker,
                color=colors.get(arm),
                capsize=3,
                label=f"{arm.upper()} {task}",
            )
        ax.axhline(entry["scores"]["pruned"], color=colors["pruned"], ls="--", lw=1)
    _log_steps(ax, acc_steps)
    ax.set_ylabel("accuracy (dashed: pruned)")
    ax.set_title("accuracy (±1.96 SE)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[len(panels) + 1]
    for arm, t in results["training"].items():
        xs, ys = zip(*t["losses"]) if t["losses"] else ((), ())
        ax.plot(xs, ys, color=colors.get(arm), lw=1, label=arm.upper())
    _log_steps(ax, [1, *steps])
    ax.set_ylabel("training loss (own targets)")
    ax.set_title("training loss", fontsize=10)
    ax.legend(fontsize=8)
    for ax in axes[len(panels) + 2 :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------- report


def _ci(ci: list[float], scale: float = 100, digits: int = 1) -> str:
    return f"[{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"


def _measure_lines(name: str, entry: dict, steps: list[int], compared: list[str]) -> list[str]:
    arms = [a for a in entry["arms"] if a != "pruned"]
    pruned = entry["arms"]["pruned"]["pruned"]
    lines = [
        f"### {DOC_SET_TITLES.get(name, name)}",
        "",
        f"{entry['documents']} documents, {entry['tokens']:,} scored tokens. Pruned model: KL "
        f"{pruned['kl']:.4f} nats/token, {pruned['bpb']:.4f} bits/byte (unpruned {entry['unpruned_bpb']:.4f}).",
        "",
        "| step | "
        + " | ".join(f"{a.upper()} KL | {a.upper()} recovery % [95 %]" for a in arms)
        + (f" | {compared[0].upper()} − {compared[1].upper()} points [95 %, paired]" if entry["gaps"] else "")
        + " | "
        + " | ".join(f"{a.upper()} bits/byte" for a in arms)
        + " |",
        "|---" * (1 + 2 * len(arms) + (1 if entry["gaps"] else 0) + len(arms)) + "|",
    ]
    for s in steps:
        cells = []
        for a in arms:
            r = entry["arms"][a][str(s)]
            cells += [f"{r['kl']:.4f}", f"{100 * r['recovery']:.1f} {_ci(r['recovery_ci95'])}"]
        if entry["gaps"]:
            g = entry["gaps"][str(s)]
            cells.append(f"{g['gap']:+.1f} {_ci(g['ci95'], 1)}")
        cells += [f"{entry['arms'][a][str(s)]['bpb']:.4f}" for a in arms]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if entry["bpb_gaps"]:
        last = str(steps[-1])
        g = entry["bpb_gaps"][last]
        lines += [
            "",
            f"Bits per byte at step {last}, {compared[0].upper()} − {compared[1].upper()}: {g['gap']:+.4f} "
            f"{_ci(g['ci95'], 1, 4)} (negative = {compared[0].upper()} predicts the text better).",
        ]
    return lines + [""]


def _pruning_lines(results: dict) -> list[str]:
    from .model_cost import FLOPS_FORMULA, flops_per_token

    pr = results["pruning"]
    orig, pruned = pr["original_shape"], pr["pruned_shape"]
    fo, fp = flops_per_token(orig), flops_per_token(pruned)
    tp = results["throughput"]
    lines = [
        "## Pruning",
        "",
        f"Removed blocks {pr['removed_blocks']} ({results['preset']['metric']}): {pr['num_layers_before']} → "
        f"{pr['num_layers_after']} blocks.",
        "",
        "| | original | pruned | pruned / original |",
        "|---|---|---|---|",
        f"| parameters | {orig['params']:,} | {pruned['params']:,} | {pruned['params'] / orig['params']:.3f} |",
        f"| non-embedding parameters | {orig['nonembedding_params']:,} | {pruned['nonembedding_params']:,} | "
        f"{pruned['nonembedding_params'] / orig['nonembedding_params']:.3f} |",
        f"| GFLOPs/token at n_ctx {fo['n_ctx']} | {fo['flops'] / 1e9:.4f} | {fp['flops'] / 1e9:.4f} | "
        f"{fp['flops'] / fo['flops']:.3f} |",
        f"| … with the output head | {fo['flops_with_head'] / 1e9:.4f} | {fp['flops_with_head'] / 1e9:.4f} | "
        f"{fp['flops_with_head'] / fo['flops_with_head']:.3f} |",
    ]
    for key, label in (
        ("prefill_tokens_per_s", "prefill tokens/s"),
        ("decode_tokens_per_s", "decode tokens/s"),
    ):
        o, p = tp["original"][key], tp["pruned"][key]
        lines.append(f"| {label} (measured) | {o:.1f} | {p:.1f} | {p / o:.3f} (speed-up {p / o:.2f}×) |")
    pre = results["preset"]
    lines += [
        "",
        f"{FLOPS_FORMULA}. Throughput: batch {pre['throughput_batch']}, {pre['throughput_prompt_tokens']}-token "
        f"random prompts, {pre['throughput_new_tokens']} greedy new tokens, {results['resolved']['dtype']}, "
        "both models in one process, alternating, median of 3 rounds.",
        "",
    ]
    return lines


def render(results: dict[str, Any]) -> str:
    """The study's ``REPORT.md`` from its summarised results (reads nothing else)."""
    pre, res = results["preset"], results["resolved"]
    steps, compared = pre["checkpoints"], results["compared"]
    t = results["target"]
    a, b = (c.upper() for c in compared)
    lines = [
        f"# Forgetting-curve study — preset `{pre['name']}`",
        "",
        f"Model `{pre['model']}`, {pre['num_blocks']} blocks pruned; arms: "
        + "; ".join(f"**{k}** ({v})" for k, v in results["arms"].items())
        + f". Fine-tuning set `{pre['train_set']}`, {pre['rows']} rows, {res['max_steps']} optimizer steps "
        f"({res['epochs']} epochs), regime `{pre['regime']}`"
        + (f" (LoRA r {pre['lora_r']} / alpha {pre['lora_alpha']})" if pre["regime"] == "lora" else "")
        + f", lr {res['learning_rate']:g} (cosine), batch {pre['micro_batch_size']} × "
        f"{pre['gradient_accumulation_steps']}, sequence cap {results['plan']['sequence_len']}, seed {pre['seed']}, "
        f"{res['dtype']}. Checkpoints {steps}. Every trained arm: same rows, order, seed, learning rate and steps "
        "through the same `axolotl train` recipe; arms differ only in their recipe switch.",
        "",
        f"Machine: {machine_summary()}."
        + (" Preset `quick` is a sanity check, not evidence." if pre["name"] == "quick" else ""),
        "",
        "## Target",
        "",
    ]
    if "kl_gap" in t:
        lines.append(
            f"- KL recovery on held-out instruction answers at step {steps[-1]}: {a} − {b} = {t['kl_gap']:+.1f} points "
            f"{_ci(t['kl_ci95'], 1)}; target ≥ +{t['points']:g} with the interval above 0: "
            f"**{'met' if t['kl_met'] else 'not met'}**."
        )
    acc = ", ".join(f"{k} {v:+.1f}" if v is not None else f"{k} –" for k, v in t["accuracy"].items())
    lines += [
        f"- Accuracy {a} − {b} at step {res['accuracy_steps'][-1]} (points): {acc}; target ≥ 0: "
        f"**{'met' if t['accuracy_met'] else 'not met'}**.",
        "",
        "## Curves",
        "",
        "![curves](curves.png)",
        "",
        "KL recovery = 1 − KL(model) / KL(pruned), with KL(unpruned ‖ model) per token over the full "
        "vocabulary (token-weighted over documents); bands and intervals: bootstrap over documents "
        f"({pre['bootstrap']} resamples; paired: the same documents for both models and the pruned one).",
        "",
        "## KL recovery and bits per byte",
        "",
    ]
    for name, entry in results["measures"].items():
        lines += _measure_lines(name, entry, steps, compared)
    lines += ["## Accuracy", ""]
    labels = list(next(iter(results["accuracy"].values()))["scores"]) if results["accuracy"] else []
    tasks = list(results["accuracy"])
    lines += [
        "| model | " + " | ".join(f"{t_} {results['accuracy'][t_]['metric']} %" for t_ in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for label in labels:
        lines.append(
            f"| {label} | "
            + " | ".join(f"{100 * results['accuracy'][t_]['scores'][label]:.1f}" for t_ in tasks)
            + " |"
        )
    lines.append("")
    for t_, entry in results["accuracy"].items():
        for s, g in entry["gaps"].items():
            lines.append(
                f"- {t_} at step {s}: {a} − {b} = {g['gap']:+.1f} points {_ci(g['ci95'], 1)} (paired bootstrap over {g['items']} items)."
            )
    lines += [""] + _pruning_lines(results)
    d = results["distill"]
    lines += [
        "## Self-distillation",
        "",
        f"{d.get('accepted')} of {d.get('rows')} rewrites accepted ({100 * (d.get('acceptance_rate') or 0):.1f} %), "
        f"checker `{d.get('checker')}`, {d.get('retries')} sampled retries; the rest fall back to the original. "
        f"Teacher NLL of the targets: original {d.get('nll_original') or float('nan'):.3f} → distilled "
        f"{d.get('nll_distilled') or float('nan'):.3f}.",
        "",
        "| try | rows tried | accepted | rejected (reasons) |",
        "|---|---|---|---|",
    ]
    for tr in d.get("acceptance_by_try") or []:
        why = ", ".join(f"{r} {c}" for r, c in tr["rejected"].items()) or "–"
        lines.append(f"| {tr['try']} | {tr['rows']} | {tr['accepted']} | {why} |")
    plan = results["plan"]
    lines += [
        "",
        "## Training",
        "",
        f"Sequence cap {plan['sequence_len']} ({'computed: the shortest that keeps ' + format(pre['sequence_coverage'], '.0%') + ' of the rows whole' if plan['computed'] else 'set'}); "
        "rows whole at the cap: "
        + ", ".join(f"{k.upper()} {100 * v:.1f} %" for k, v in plan["whole_rows"].items())
        + "; longer rows are truncated (`excess_length_strategy: truncate`), none dropped. Token lengths: "
        + ", ".join(f"{k.upper()} median {v['median']}, max {v['max']}" for k, v in plan["lengths"].items())
        + ".",
        "",
        "| arm | prepared rows | rows at the cap | final loss |",
        "|---|---|---|---|",
    ]
    for arm, tr in results["training"].items():
        loss = tr["losses"][-1][1] if tr["losses"] else float("nan")
        lines.append(f"| {arm} | {tr['order']['rows']} | {tr['order']['at_cap']} | {loss:.3f} |")
    lines += ["", "## Consistency checks", ""]
    for k, v in results["checks"].items():
        detail = ", ".join(f"{kk} {vv}" for kk, vv in v.items() if kk != "ok")
        lines.append(f"- {k}: **{'ok' if v['ok'] else 'FAILED'}** ({detail})")
    lines += [
        "",
        "## Time per stage",
        "",
        "| stage | wall s | CPU s | load average (start, end) | cached now |",
        "|---|---|---|---|---|",
    ]
    for k, v in results["stages"].items():
        load = v.get("load_average") or [None, None]
        ld = f"{load[0]:.1f}, {load[1]:.1f}" if load[0] is not None else "–"
        cpu = f"{v['cpu_seconds']:.0f}" if v.get("cpu_seconds") is not None else "–"
        lines.append(f"| {k} | {v['seconds']:.0f} | {cpu} | {ld} | {v['cached']} |")
    u = results["unit_costs"]
    lines += [
        "",
        f"Wall time of this invocation: {results['wall_seconds']:.0f} s. Stage cache: `{res['stage_cache']}`. "
        "Times are of the stage's first run (a cached stage keeps them).",
        "",
        "Unit costs (wall, under the load shown): seconds per optimizer step "
        + ", ".join(f"{a.upper()} {v}" for a, v in u["train_seconds_per_step"].items())
        + f"; distillation {u['distill_tokens_per_s']} generated tokens/s ({u['distill_generated_tokens']} tokens); "
        "KL measurement "
        + ", ".join(f"{a} {v}" for a, v in u["measure_token_passes_per_s"].items())
        + " token passes/s; multiple choice "
        + ", ".join(f"{t} {v}" for t, v in u["choice_items_per_s"].items())
        + " items/s.",
        "",
    ]
    return "\n".join(lines)


def write_report(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Summarise ``raw``; write ``results.json`` and ``curves.png`` (``REPORT.md`` is rendered from
    them by :func:`sdd_plugin.report.build_report`); return the results."""
    results = summarise(raw)
    plot_curves(results, run_dir / "curves.png")
    write_json_atomic(run_dir / "results.json", results)
    return results

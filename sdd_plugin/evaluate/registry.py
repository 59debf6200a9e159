"""The evaluation tasks: local ``sdd_*`` task specs, stock metrics and shots, presets, task names.

Each local task has a :class:`TaskSpec` (primary metric, default shots, the data files it reads).
Stock lm-eval task names (``arc_easy``, ``hellaswag``, ...) pass straight through to lm-eval (they
need the hub). Perplexity tasks (``sdd_synth_ppl``, ``sdd_wikitext``) report bits per byte, where
lower is better (:func:`higher_is_better`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """A local ``sdd_*`` task: its primary metric, default shots and the data it needs."""

    name: str
    metric: str  # lm-eval metric name of the primary metric
    shots: int  # default number of few-shot examples (OpenLLM leaderboard v1 settings)
    sources: tuple[str, ...]  # files or folders relative to the data root ("" = embedded data)
    label: str | None = None  # display name of the metric when it differs (mc2)
    filter: str = "none"
    higher_is_better: bool = True  # False for perplexity-style metrics (bits_per_byte)

    @property
    def metric_key(self) -> str:
        """The key lm-eval uses in its results (``metric,filter``)."""
        return f"{self.metric},{self.filter}"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "sdd_arc_easy",
            "acc",
            0,
            ("arc/ARC-Easy-Train.jsonl", "arc/ARC-Easy-Dev.jsonl", "arc/ARC-Easy-Test.jsonl"),
        ),
        TaskSpec(
            "sdd_arc_challenge",
            "acc_norm",
            25,
            ("arc/ARC-Challenge-Train.jsonl", "arc/ARC-Challenge-Dev.jsonl", "arc/ARC-Challenge-Test.jsonl"),
        ),
        TaskSpec("sdd_hellaswag", "acc_norm", 10, ("hellaswag/hellaswag_val_full.txt.gz",)),
        TaskSpec("sdd_truthfulqa_mc2", "acc", 0, ("truthfulqa/mc_task.json",), label="mc2"),
        TaskSpec("sdd_mmlu", "acc", 5, ("mmlu/test", "mmlu/dev")),
        TaskSpec("sdd_winogrande", "acc", 5, ("winogrande/dev.jsonl",)),
        TaskSpec(
            "sdd_gsm8k", "exact_match", 5, ("gsm8k/train.jsonl", "gsm8k/test.jsonl"), filter="strict-match"
        ),
        TaskSpec("sdd_synth_mc", "acc", 0, ()),
        TaskSpec("sdd_synth_math", "exact_match", 5, (), filter="strict-match"),
        TaskSpec("sdd_synth_ppl", "bits_per_byte", 0, (), higher_is_better=False),
        TaskSpec("sdd_wikitext", "bits_per_byte", 0, ("wikitext2/wiki.test.raw",), higher_is_better=False),
    ]
}

#: metrics where lower is better (lm-eval's perplexity family); used for results without the flag
LOWER_IS_BETTER_METRICS = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity"})


def higher_is_better(task_or_result: str | dict) -> bool:
    """Whether a larger score is better: for a task name, a metric name, or one result/table row.

    A row's own ``higher_is_better`` key wins; otherwise the task's :class:`TaskSpec`, else the
    metric name (``bits_per_byte`` and the perplexities are lower-is-better).
    """
    if isinstance(task_or_result, dict):
        flag = task_or_result.get("higher_is_better")
        if flag is not None:
            return bool(flag)
        task = task_or_result.get("task")
        if task in TASKS:
            return TASKS[task].higher_is_better
        return str(task_or_result.get("metric")) not in LOWER_IS_BETTER_METRICS
    if task_or_result in TASKS:
        return TASKS[task_or_result].higher_is_better
    metric = STOCK_METRICS.get(task_or_result, (task_or_result, ""))[0]
    return metric not in LOWER_IS_BETTER_METRICS


#: primary metrics of stock lm-eval tasks (leaderboard v1 choices); others fall back to acc/exact_match
STOCK_METRICS: dict[str, tuple[str, str]] = {
    "arc_easy": ("acc", "none"),
    "arc_challenge": ("acc_norm", "none"),
    "hellaswag": ("acc_norm", "none"),
    "truthfulqa_mc2": ("acc", "none"),
    "mmlu": ("acc", "none"),
    "winogrande": ("acc", "none"),
    "gsm8k": ("exact_match", "strict-match"),
    "wikitext": ("bits_per_byte", "none"),
}

PRESETS: dict[str, list[str]] = {
    "openllm": [
        "sdd_arc_challenge",
        "sdd_hellaswag",
        "sdd_truthfulqa_mc2",
        "sdd_mmlu",
        "sdd_winogrande",
        "sdd_gsm8k",
        "sdd_arc_easy",
    ],
    "openllm-hub": [
        "arc_challenge",
        "hellaswag",
        "truthfulqa_mc2",
        "mmlu",
        "winogrande",
        "gsm8k",
        "arc_easy",
    ],
    "quick": ["sdd_arc_easy", "sdd_hellaswag"],
    "synth": ["sdd_synth_mc", "sdd_synth_math", "sdd_synth_ppl"],
    "ppl": ["sdd_synth_ppl", "sdd_wikitext"],
}

#: default shots of the stock tasks in the openllm-hub preset (None = the task's own default)
STOCK_SHOTS: dict[str, int] = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "truthfulqa_mc2": 0,
    "mmlu": 5,
    "winogrande": 5,
    "gsm8k": 5,
    "arc_easy": 0,
}


def expand_tasks(tasks: str | Sequence[str] | None = None, preset: str | None = None) -> list[str]:
    """Task names from a comma list and/or a preset, in order, without duplicates."""
    out: list[str] = []
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        out += PRESETS[preset]
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    for t in tasks or []:
        t = t.strip()
        if t in PRESETS:
            out += PRESETS[t]
        elif t:
            out.append(t)
    if not out:
        raise ValueError("no tasks given: pass --tasks (e.g. sdd_arc_easy,sdd_hellaswag) or --preset")
    return list(dict.fromkeys(out))


def validate_tasks(tasks: Sequence[str], task_manager=None) -> None:
    """Raise ValueError naming unknown tasks and listing the known ``sdd_*`` tasks and presets.

    Without ``task_manager`` only ``sdd_*`` names are checked (stock names need lm-eval's index).
    """
    unknown = [t for t in tasks if t not in TASKS and not t.startswith("sdd_mmlu_")]
    if not unknown:
        return
    if task_manager is None:  # stock names are checked later against lm-eval's (slow) index
        unknown = [t for t in unknown if t.startswith("sdd_")]
    else:
        known = set(task_manager.all_tasks)
        unknown = [t for t in unknown if t.startswith("sdd_") or t not in known]
    if unknown:
        raise ValueError(
            f"unknown task(s) {', '.join(unknown)}; local tasks: {', '.join(TASKS)}; presets: "
            f"{', '.join(PRESETS)}; any stock lm-eval task name (e.g. arc_easy) also works when the hub is reachable"
        )


def parse_shots(value: str | int | dict | None) -> dict[str, int] | int | None:
    """``"5"`` -> 5, ``"sdd_arc_easy=0,sdd_hellaswag=10"`` -> dict; dicts/ints pass through."""
    if value is None or isinstance(value, (int, dict)):
        return value
    value = value.strip()
    if not value:
        return None
    if "=" not in value:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"--shots {value!r}: expected an integer or task=k,... pairs") from None
    out = {}
    for part in value.split(","):
        name, _, k = part.partition("=")
        try:
            out[name.strip()] = int(k)
        except ValueError:
            raise ValueError(f"--shots: {part!r} is not task=k with an integer k") from None
    return out


def shots_for(task: str, num_fewshot: dict[str, int] | int | None) -> int | None:
    """Few-shot count of ``task``: the override (one int or ``{task: k}``), else its default."""
    if isinstance(num_fewshot, int):
        return num_fewshot
    if isinstance(num_fewshot, dict) and task in num_fewshot:
        return num_fewshot[task]
    if task in TASKS:
        return TASKS[task].shots
    return STOCK_SHOTS.get(task)


def primary_metric(task: str) -> tuple[str, str, str]:
    """(metric, filter, display label) of a task."""
    if task in TASKS:
        s = TASKS[task]
        return s.metric, s.filter, s.label or s.metric
    if task.startswith("sdd_mmlu_"):
        return "acc", "none", "acc"
    m, f = STOCK_METRICS.get(task, ("", "none"))
    return m, f, ("mc2" if task == "truthfulqa_mc2" else m)

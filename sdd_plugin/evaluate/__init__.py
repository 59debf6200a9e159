"""Stage 5, evaluate: lm-eval on local task YAMLs, recovery statistics, Markdown and charts.

Modules: ``registry`` (tasks, presets, shots), ``local_data`` (data root, converters, rendered
YAMLs), ``summary`` (one result row from lm-eval's output), ``run`` (:func:`evaluate`), ``stats``
(recovery), ``render`` (Markdown, PNG charts). The task YAMLs are package data in ``tasks/``.
"""

from .local_data import check_task_data, prepare_tasks, resolve_data_root, wikitext_pages
from .registry import PRESETS, TASKS, TaskSpec, expand_tasks, higher_is_better, parse_shots, validate_tasks
from .render import (
    format_score,
    metric_label,
    percent,
    plot_recovery,
    recovery_markdown,
    results_markdown,
    write_recovery,
)
from .run import evaluate, load_results, model_identity, model_paths
from .stats import INFORMATIVE_SIGMAS, informative, paired_gap, recovery, recovery_table

__all__ = [
    "INFORMATIVE_SIGMAS",
    "PRESETS",
    "TASKS",
    "TaskSpec",
    "check_task_data",
    "evaluate",
    "expand_tasks",
    "format_score",
    "higher_is_better",
    "informative",
    "load_results",
    "metric_label",
    "model_identity",
    "model_paths",
    "paired_gap",
    "parse_shots",
    "percent",
    "plot_recovery",
    "prepare_tasks",
    "recovery",
    "recovery_markdown",
    "recovery_table",
    "resolve_data_root",
    "results_markdown",
    "validate_tasks",
    "wikitext_pages",
    "write_recovery",
]

"""Stage 5, evaluate: lm-eval on local task YAMLs, recovery statistics, Markdown and charts."""

from .run import evaluate, paired_gap, recovery_table

__all__ = ["evaluate", "paired_gap", "recovery_table"]

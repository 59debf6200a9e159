"""Benchmarks that run the whole pipeline: the recovery benchmark (baseline, pruned, SFT, SDD).

Modules: ``presets`` (settings), ``stages`` (the resumable stage cache), ``trainer`` (training rows,
recipe, ``axolotl train``), ``recovery`` (:func:`run_recovery`, one function per stage),
``report_sections`` (the benchmark's ``REPORT.md`` page, written through ``sdd_plugin.report``).
"""

from .presets import Preset, TrainSet, get_preset
from .recovery import run_recovery
from .stages import Stages
from .trainer import axolotl_train, recipe_for, training_rows

__all__ = [
    "Preset",
    "Stages",
    "TrainSet",
    "axolotl_train",
    "get_preset",
    "recipe_for",
    "run_recovery",
    "training_rows",
]

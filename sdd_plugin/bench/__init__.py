"""Benchmarks that run the whole pipeline: the recovery benchmark (baseline, pruned, SFT, SDD) and
the forgetting-curve study (pruned vs SFT vs SDD at log-spaced checkpoints, ``sdd bench drift``).

Modules: ``presets`` (settings), ``stages`` (the resumable stage cache), ``trainer`` (training rows,
recipe, ``axolotl train``), ``recovery`` (:func:`run_recovery`, one function per stage),
``report_sections`` (the benchmark's ``REPORT.md`` page, written through ``sdd_plugin.report``);
the study: ``drift`` (:func:`run_drift`), ``drift_presets``, ``drift_data``, ``drift_training``,
``drift_report``, and ``model_cost`` (parameters, FLOPs per token, measured tokens/s).
"""

from .drift import run_drift
from .drift_presets import DriftPreset, get_drift_preset
from .presets import Preset, TrainSet, get_preset
from .recovery import run_recovery
from .stages import Stages
from .trainer import axolotl_train, recipe_for, training_rows

__all__ = [
    "DriftPreset",
    "Preset",
    "Stages",
    "TrainSet",
    "axolotl_train",
    "get_drift_preset",
    "get_preset",
    "recipe_for",
    "run_drift",
    "run_recovery",
    "training_rows",
]

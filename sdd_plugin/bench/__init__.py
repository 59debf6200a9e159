"""Benchmarks that run the whole pipeline: the recovery benchmark (baseline, pruned, SFT, SDD)."""

from .run import get_preset, run_recovery

__all__ = ["get_preset", "run_recovery"]

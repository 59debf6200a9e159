"""Outputs of earlier sdd runs that a recipe points at, used as they are (no axolotl import here).

A multi-GPU or multi-node job prunes and distils once, before training (``sdd prune`` + ``sdd
distill``, or ``axolotl preprocess``), and every rank of ``axolotl train`` then only reads:

- :func:`pre_pruned`: ``base_model`` is a folder ``sdd prune`` wrote (``sdd_prune.json`` +
  ``config.json``): the plugin trains it as it is, whatever ``sdd_prune`` says, and never cuts a
  pruned model a second time. The unpruned model it records is the default teacher.
- :func:`pre_distilled`: a ``datasets:`` entry's ``path`` is a set ``sdd distill`` wrote (its
  ``distilled.jsonl``, that file's folder, or the ``kd.jsonl`` beside it, with
  ``distill_report.json`` beside them): axolotl loads it as it is, whatever ``sdd_distill`` says,
  so a distilled set is never rewritten a second time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..prune.stage import PruneResult


def pre_pruned(base_model: Any) -> PruneResult | None:
    """The record of a pruned checkpoint when ``base_model`` is a folder ``sdd prune`` (or the
    plugin) wrote, else None. No weights load."""
    from ..prune.stage import load_prune_result

    if not base_model or not Path(str(base_model)).expanduser().is_dir():
        return None
    return load_prune_result(Path(str(base_model)).expanduser())


def pruned_source(result: PruneResult) -> str | None:
    """The unpruned model ``result`` was cut from, as recorded (it may not exist on this machine)."""
    source = result.extra.get("source_path")
    return str(source) if source else None


@dataclass(frozen=True)
class PreDistilled:
    """A set ``sdd distill`` wrote, found from a dataset entry's ``path``."""

    rows: Path
    """The distilled rows (the input's schema, responses replaced)."""
    kd: Path | None
    """The KD set beside them (``kd.jsonl``, when distilled with ``kd_top_k``)."""
    report: dict[str, Any]
    """Its ``distill_report.json``."""


def pre_distilled(path: Any) -> PreDistilled | None:
    """The distilled set at ``path`` (its rows file, its folder, or its ``kd.jsonl``), or None when
    ``path`` is not an ``sdd distill`` output (no readable ``distill_report.json`` beside it that
    names the file)."""
    from ..distill.kd import KD_NAME
    from ..distill.outputs import REPORT_NAME

    if not isinstance(path, (str, Path)) or not str(path):
        return None
    given = Path(str(path)).expanduser()
    folder = given if given.is_dir() else given.parent
    try:
        report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, Mapping) or not report.get("output"):
        return None
    rows = folder / Path(str(report["output"])).name  # the folder may have been copied elsewhere
    kd = folder / KD_NAME if report.get("kd") and (folder / KD_NAME).is_file() else None
    if not rows.is_file() or (given.is_file() and given not in (rows, kd)):
        return None
    return PreDistilled(rows, kd, dict(report))

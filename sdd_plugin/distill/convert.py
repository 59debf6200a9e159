"""Convert fine-tuning rows of any :mod:`.formats` format into a layout axolotl reads as it is.

Layouts (``LAYOUTS``):

- ``messages``: ``{"messages": [<context turns>, {"role": "assistant", "content": <response>}]}``,
  for axolotl ``type: chat_template``;
- ``alpaca``: ``{"instruction", "input": "", "output"}``, for axolotl ``type: alpaca``.

E.g. GSM8K's ``question``/``answer``, which no axolotl chat type reads. GSM8K ``<<48/2=24>>``
calculator annotations are stripped from the responses; the ``#### n`` answer line stays.
``sdd data convert`` is the command line of :func:`convert_dataset`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.sources import describe_source
from .formats import get_format, load_rows, read_examples

__all__ = ["LAYOUTS", "convert_dataset", "convert_rows", "layout_for_axolotl_type"]

LAYOUTS = ("messages", "alpaca")
_CALC_RE = re.compile(r"<<[^<>]*>>")


def layout_for_axolotl_type(axolotl_type: Any) -> str | None:
    """The layout an axolotl dataset ``type`` reads: ``chat_template``/``messages`` -> ``messages``,
    ``alpaca*`` -> ``alpaca``; None for other types."""
    t = axolotl_type if isinstance(axolotl_type, str) else ""
    if t.startswith(("chat_template", "messages")):
        return "messages"
    if t.startswith("alpaca"):
        return "alpaca"
    return None


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def convert_rows(
    rows: Sequence[dict], format: str, layout: str = "messages", source: str = "<rows>"
) -> list[dict[str, Any]]:
    """``rows`` of dataset format ``format`` in ``layout`` (ValueError naming ``source``, row and
    field for a bad row)."""
    _check_layout(layout)
    out: list[dict[str, Any]] = []
    for ex in read_examples(rows, get_format(format).name, source):
        response = _CALC_RE.sub("", ex.reference)
        if layout == "messages":
            out.append({"messages": list(ex.messages) + [{"role": "assistant", "content": response}]})
        else:
            out.append({"instruction": ex.instruction, "input": "", "output": response})
    return out


def convert_dataset(
    source: str | os.PathLike | Sequence[dict],
    format: str,
    out: str | os.PathLike,
    layout: str = "messages",
    split: str = "train",
    limit: int | None = None,
    config: str | None = None,
) -> Path:
    """Read ``source`` (local file/folder, hub id with optional ``config``, or rows) as ``format``,
    convert the first ``limit`` rows (all when None) to ``layout`` and write them to the jsonl
    ``out`` atomically; returns ``out``. Every input is checked before anything is written."""
    from ..data.synthetic import write_jsonl

    spec = get_format(format)  # ValueError listing the known formats
    _check_layout(layout)
    rows = load_rows(source, spec.name, split=split, limit=limit, validate=False, config=config)
    return write_jsonl(convert_rows(rows, spec.name, layout, describe_source(source)), out)

"""Fine-tuning outputs on disk: LoRA adapter folders and trainer checkpoints.

- :func:`is_adapter`, :func:`adapter_base` -- a peft adapter folder and the base model its
  ``adapter_config.json`` names;
- :func:`pruned_base` -- the sdd-pruned checkpoint an adapter was trained on (merging or resuming
  the adapter must use exactly that one, whatever today's prune settings say);
- :func:`drop_incomplete_checkpoints` -- remove ``checkpoint-*`` folders a kill cut off mid-save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .prune.stage import PruneResult

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(path: str | os.PathLike) -> bool:
    """True if ``path`` is a peft adapter folder (has ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _adapter_config(adapter: str | os.PathLike) -> dict[str, Any]:
    try:
        cfg = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def adapter_base(adapter: str | os.PathLike) -> str | None:
    """``base_model_name_or_path`` of an adapter folder, or None (no or unreadable adapter_config.json)."""
    base = _adapter_config(adapter).get("base_model_name_or_path")
    return str(base) if base else None


def pruned_base(adapter: str | os.PathLike) -> PruneResult | None:
    """The sdd-pruned checkpoint the adapter in ``adapter`` was trained on, as recorded in that
    checkpoint's ``sdd_prune.json``; None when the adapter's base is not an sdd-pruned folder."""
    from .prune.stage import load_prune_result

    base = adapter_base(adapter)
    return load_prune_result(base) if base else None


def drop_incomplete_checkpoints(output_dir: str | os.PathLike | None) -> list[Path]:
    """Delete ``checkpoint-*`` folders of ``output_dir`` that a kill cut off mid-save.

    transformers writes ``trainer_state.json`` last, and axolotl's auto-resume picks the highest
    numbered checkpoint whether or not it is complete; without this a run killed while saving
    could not resume. Returns the folders removed."""
    if not output_dir or not Path(output_dir).is_dir():
        return []
    removed = []
    for ckpt in sorted(Path(output_dir).glob("checkpoint-*")):
        if ckpt.is_dir() and not (ckpt / "trainer_state.json").is_file():
            shutil.rmtree(ckpt)
            removed.append(ckpt)
    return removed

"""Resumable benchmark stages: ``run_dir/stages/<name>/``, each keyed by a hash of its inputs.

A finished stage with the same inputs is not run again; a changed input recomputes the stage (and,
since downstream stages hash the keys they depend on, everything after it). An unfinished stage
with unchanged inputs keeps its folder, so the work inside it (e.g. training checkpoints) resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import stable_hash, write_json_atomic

STAGE_FILE = "stage.json"
PENDING_FILE = "stage.pending.json"


class Stages:
    """Runs named stages once per input hash; records time per stage; resumes after a stop."""

    def __init__(self, run_dir: Path, echo: Callable[[str], None] = print) -> None:
        self.run_dir = run_dir
        self.echo = echo
        self.records: dict[str, dict[str, Any]] = {}

    def folder(self, name: str) -> Path:
        """The folder of stage ``name``."""
        return self.run_dir / "stages" / name

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(folder) -> summary`` unless a finished stage with the same inputs exists."""
        key = stable_hash(inputs)
        folder = self.folder(name)
        meta_path = folder / STAGE_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") == key:
                self.echo(f"[{name}] cached ({meta['seconds']:.0f} s when it ran)")
                meta["cached"] = True
                self.records[name] = meta
                return meta
            self.echo(f"[{name}] settings changed: recomputing")
        pending = folder / PENDING_FILE
        resuming = pending.is_file() and json.loads(pending.read_text(encoding="utf-8")).get("key") == key
        if folder.exists() and not resuming:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # an unfinished stage with the same inputs keeps its folder (e.g. training checkpoints)
        write_json_atomic(pending, {"stage": name, "key": key})
        self.echo(f"[{name}] {'resuming' if resuming else 'running'} ...")
        t0 = time.time()
        summary = fn(folder)
        meta = {
            "stage": name,
            "key": key,
            "inputs": inputs,
            "summary": summary,
            "seconds": round(time.time() - t0, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(meta_path, meta)
        pending.unlink(missing_ok=True)
        self.echo(f"[{name}] done in {meta['seconds']:.0f} s")
        meta["cached"] = False
        self.records[name] = meta
        return meta

"""Resumable benchmark stages: ``run_dir/stages/<name>/``, each keyed by a hash of its inputs.

A finished stage with the same inputs is not run again; a changed input recomputes the stage (and,
since downstream stages hash the keys they depend on, everything after it). An unfinished stage
with unchanged inputs keeps its folder, so the work inside it (e.g. training checkpoints) resumes.
A stage is a :func:`sdd_plugin.cache.cached_artifact` built in place, so two runs sharing a run
folder run each stage once.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import cached_artifact, fingerprint, write_json_atomic

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
        key = fingerprint(inputs)
        folder = self.folder(name)
        built: dict[str, Any] = {}

        def build(target: Path) -> None:
            built.update(self._build(name, key, inputs, fn, target))

        art = cached_artifact(folder, build, STAGE_FILE, key=key, in_place=True)
        if not art.reused:
            meta = dict(built, cached=False)
        else:
            meta = json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
            self.echo(f"[{name}] cached ({meta['seconds']:.0f} s when it ran)")
            meta["cached"] = True
        self.records[name] = meta
        return meta

    def _build(
        self, name: str, key: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]], folder: Path
    ) -> dict[str, Any]:
        """Run stage ``name`` in ``folder``: resume an unfinished run of the same inputs, wipe
        anything else; write :data:`STAGE_FILE` last."""
        pending = folder / PENDING_FILE
        if (folder / STAGE_FILE).is_file():
            self.echo(f"[{name}] settings changed: recomputing")
        resuming = _recorded_key(pending) == key
        if not resuming:
            shutil.rmtree(folder)
            folder.mkdir(parents=True)
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
        write_json_atomic(folder / STAGE_FILE, meta)
        pending.unlink(missing_ok=True)
        self.echo(f"[{name}] done in {meta['seconds']:.0f} s")
        return meta


def _recorded_key(path: Path) -> str | None:
    """The ``"key"`` of a JSON record, or None (missing or unreadable)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("key") if isinstance(record, dict) else None

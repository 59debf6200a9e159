"""What a resumed distillation reuses and how its report counts the whole run.

- :class:`NllCache`: the NLL meter's results, one durable line per (prompt, response) in
  ``nll.jsonl`` of the run's cache folder; ``response_nll(..., cache=...)`` scores only the rows not
  in it and loads the teacher only when there is one;
- :class:`Lap`: each generated row's share of the generation time (the time since the previous row
  finished), kept with the row in the row cache;
- :func:`generation_totals`: rows, tokens, seconds and rates over every row a run's output stands
  on, whichever invocation generated it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..cache import stable_hash

NLL_NAME = "nll.jsonl"


class NllCache:
    """Append-only ``nll.jsonl`` (``{"key", "nll", "tokens"}`` per line, fsynced; torn lines ignored)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / NLL_NAME
        self.records: dict[str, tuple[float, int]] = {}
        self._keys: list[str] = []
        self._file = None
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.records.setdefault(rec["key"], (float(rec["nll"]), int(rec["tokens"])))
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill

    def pending(
        self, order: list[int], prompts: Sequence[str], response_ids: Sequence[list[int]], per_row: list
    ) -> list[int]:
        """Fill ``per_row`` from the cache; return the rows of ``order`` still to score (those with a
        non-empty response that is not cached)."""
        self._keys = [stable_hash([p, list(ids)], 24) for p, ids in zip(prompts, response_ids)]
        for i, key in enumerate(self._keys):
            if key in self.records:
                per_row[i] = self.records[key]
        return [i for i in order if response_ids[i] and self._keys[i] not in self.records]

    def model(self, model: Any, todo: list[int]) -> Any:
        """``model``, or the model a loader function returns -- called only when ``todo`` has rows."""
        if todo and not hasattr(model, "parameters") and callable(model):
            return model()
        return model

    def add(self, row: int, nll: float, tokens: int) -> None:
        """Record row ``row`` of the last :meth:`pending` call, durably."""
        key = self._keys[row]
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            self._file.write("\n")  # a torn last line of a killed run stays on a line of its own
        self._file.write(json.dumps({"key": key, "nll": nll, "tokens": tokens}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.setdefault(key, (nll, tokens))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def once(load: Callable[[], Any]) -> Callable[[], Any]:
    """``load`` called at most once; later calls return its first result."""
    done: list[Any] = []

    def get() -> Any:
        if not done:
            done.append(load())
        return done[0]

    return get


class Lap:
    """Seconds since the previous call (the first: since construction)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def generation_totals(records: Sequence[dict]) -> dict[str, Any]:
    """``generated_rows``, ``generated_tokens``, ``generation_seconds``, ``tokens_per_s`` and
    ``rows_per_s`` over ``records`` (row-cache records; the rates over those that carry their time)."""
    timed = [r for r in records if isinstance(r.get("seconds"), (int, float))]
    seconds = sum(r["seconds"] for r in timed)
    timed_tokens = sum(r["num_tokens"] for r in timed)
    return {
        "generated_rows": len(records),
        "generated_tokens": sum(r["num_tokens"] for r in records),
        "generation_seconds": round(seconds, 2),
        "tokens_per_s": round(timed_tokens / seconds, 2) if seconds > 0 else None,
        "rows_per_s": round(len(timed) / seconds, 3) if seconds > 0 else None,
    }

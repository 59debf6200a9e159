"""Where a distillation run writes, so that a reader never sees a mix of two runs.

- :func:`resolve_out`: ``out`` is a folder (``distilled.jsonl`` and the reports go there) or a
  ``.jsonl`` / ``.json`` file (the reports beside it);
- :func:`holds_out`: a decorator; the call checks ``out`` before any work (a file where a folder
  goes, a non-empty folder or an existing file without ``overwrite``) and holds its lock
  (:func:`sdd_plugin.cache.claim_output`) until it returns, so a second run into the same ``out``
  fails at once;
- :class:`Staging`: the run writes every output into a folder beside ``out`` and
  :meth:`Staging.publish` moves it in place at the end: a folder ``out`` is replaced whole; for a
  file ``out`` the files are moved one by one (they share a folder with other files), the report last.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..cache import claim_output, remove_temps, replace_dir, temp_dir_beside

OUTPUT_NAME = "distilled.jsonl"
REPORT_NAME = "distill_report.json"
FILE_SUFFIXES = (".jsonl", ".json")

F = TypeVar("F", bound=Callable[..., Any])


def is_file_out(out: str | os.PathLike) -> bool:
    """Whether ``out`` names the distilled rows' file (``.jsonl`` / ``.json``) rather than a folder."""
    return Path(out).suffix.lower() in FILE_SUFFIXES


def resolve_out(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(folder of the outputs, path of the distilled rows)`` for a folder or a ``.jsonl`` file ``out``."""
    out = Path(out).expanduser()
    return (out.parent, out) if is_file_out(out) else (out, out / OUTPUT_NAME)


def claimed_path(out: str | os.PathLike) -> Path:
    """The path a run into ``out`` checks and locks: the rows' file, or the folder."""
    folder, path = resolve_out(out)
    return path if is_file_out(out) else folder


def holds_out(func: F) -> F:
    """Run ``func`` (which takes ``out`` and ``overwrite``) holding ``out``'s claim; on failure the
    staging folder it left is removed (the claim is still held then, so no one else is writing)."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = bound.arguments["out"]
        target = claimed_path(out)
        with claim_output(target, overwrite=bound.arguments["overwrite"], file=is_file_out(out)):
            try:
                return func(*args, **kwargs)
            except BaseException:
                remove_temps(target)
                raise

    return wrapper  # type: ignore[return-value]


class Staging:
    """A temp folder beside a run's ``out`` that receives every output until :meth:`publish`."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.final_dir, self.final_path = resolve_out(out)
        self.is_file = is_file_out(out)
        self.dir = temp_dir_beside(claimed_path(out))
        self.path = self.dir / self.final_path.name

    def final(self, value: Any) -> Any:
        """``value`` with staged paths turned into their published places: a ``str`` or ``Path``, or
        (changed in place, and returned) the strings and paths inside a dict or list."""
        staged = str(self.dir)
        if isinstance(value, Path):
            return Path(self.final(str(value)))
        if isinstance(value, str):
            if value == staged or value.startswith(staged + os.sep):
                return str(self.final_dir) + value[len(staged) :]
            return value
        if isinstance(value, dict):
            for k, v in value.items():
                value[k] = self.final(v)
        elif isinstance(value, list):
            value[:] = [self.final(v) for v in value]
        return value

    def publish(self) -> None:
        """Move the staged outputs in place: the whole folder, or (file ``out``) file by file with
        the distilled rows and then the report last."""
        if not self.is_file:
            replace_dir(self.dir, self.final_dir)
            return
        last = [self.path.name, REPORT_NAME]
        names = sorted(p.name for p in self.dir.iterdir())
        for name in [n for n in names if n not in last] + [n for n in last if n in names]:
            os.replace(self.dir / name, self.final_dir / name)
        shutil.rmtree(self.dir, ignore_errors=True)

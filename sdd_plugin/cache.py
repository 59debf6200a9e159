"""Where sdd-plugin keeps converted models and stage caches, how it names and fills them.

- :func:`cache_dir` -- the cache root;
- :func:`stable_hash`, :func:`file_hash`, :func:`fingerprint` -- cache keys of values, files, and
  of anything on disk or not (models, adapters, data folders, hub ids);
- :func:`write_json_atomic`, :func:`write_text_atomic`, :func:`atomic_dir` -- atomic writes;
- :func:`cache_lock` -- an inter-process lock (``filelock``) on one cache entry;
- :func:`cached_artifact` -- "a folder is complete when its marker files exist; otherwise build it
  once, atomically, under the lock".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from filelock import BaseFileLock

#: Files up to this size enter a fingerprint with their content hash; larger ones (model weight
#: shards) with their size and modification time, so fingerprinting a model stays cheap.
CONTENT_HASH_LIMIT = 256 << 20


def cache_dir() -> Path:
    """Root cache folder: ``$SDD_CACHE_DIR`` or ``~/.cache/sdd-plugin``."""
    root = os.environ.get("SDD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sdd-plugin"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object (sorted keys), for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def fingerprint(obj: Any, length: int = 16) -> str:
    """One cache key for a model, adapter, data folder, file, hub id or plain value.

    - an existing file: the SHA-256 of its bytes (equal to :func:`file_hash`); a file larger than
      :data:`CONTENT_HASH_LIMIT`: a hash of its size and modification time;
    - an existing folder: a hash over every file below it (relative path + the file's
      fingerprint); names starting with ``.`` (temp files, locks, download metadata) are skipped;
    - anything else (a hub id, a dict of settings): :func:`stable_hash` of the value.

    Where a thing lives is not part of its fingerprint: equal content gives an equal key (for files
    above the limit: equal size and modification time).
    """
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj).expanduser()
        if path.is_file():
            return _file_digest(path)[:length]
        if path.is_dir():
            files = {
                p.relative_to(path).as_posix(): _file_digest(p)
                for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            }
            return stable_hash({"folder": files}, length)
    return stable_hash(obj if not isinstance(obj, os.PathLike) else os.fspath(obj), length)


def _file_digest(path: Path) -> str:
    st = path.stat()
    if st.st_size > CONTENT_HASH_LIMIT:
        return stable_hash({"size": st.st_size, "mtime_ns": st.st_mtime_ns}, 64)
    return file_hash(path, 64)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temp file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` through a temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it is renamed to ``final``.

    If ``final`` already exists when the block ends (another process finished first), the new
    folder replaces it only when ``final`` is not a complete result, i.e. the old one is removed.
    On error the temp folder is deleted and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_lock(entry: str | os.PathLike) -> BaseFileLock:
    """An exclusive inter-process lock (``filelock.FileLock``) on one cache entry (a folder or file).

    Use it as a context manager; a second process asking for the same entry waits until the
    first releases it. The lock file lives in ``cache_dir()/locks`` (never inside the entry).
    """
    from filelock import FileLock

    path = Path(entry).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)[:80]
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(lock_dir / f"{name}-{stable_hash(str(path), 12)}.lock")


@dataclass(frozen=True)
class Artifact:
    """A folder :func:`cached_artifact` returned."""

    path: Path
    reused: bool
    """True when the folder was complete already (nothing was built)."""


def is_complete(folder: str | os.PathLike, marker: str | Sequence[str], key: str | None = None) -> bool:
    """Whether every ``marker`` file exists in ``folder`` (and, with ``key``, the first marker is
    a JSON object whose ``"key"`` equals it)."""
    folder = Path(folder)
    markers = [marker] if isinstance(marker, str) else list(marker)
    if not all((folder / m).is_file() for m in markers):
        return False
    if key is None:
        return True
    try:
        recorded = json.loads((folder / markers[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("key") == key


def cached_artifact(
    folder: str | os.PathLike,
    build: Callable[[Path], Any],
    marker: str | Sequence[str],
    *,
    key: str | None = None,
    rebuild: bool = False,
    in_place: bool = False,
) -> Artifact:
    """Return ``folder`` when it is complete (:func:`is_complete`); otherwise build it once.

    ``build(target)`` fills ``target`` and writes the marker file(s). It runs under
    :func:`cache_lock` (a process that waited for the lock re-checks and reuses what the first
    one built) and, unless ``in_place``, in a temp folder that :func:`atomic_dir` renames to
    ``folder`` only on success. ``in_place=True`` builds in ``folder`` itself, for builders that
    resume from partial output and write their marker last. ``rebuild=True`` builds even when
    ``folder`` is complete. A build that leaves a marker missing raises ``RuntimeError``.
    """
    folder = Path(folder)
    markers = [marker] if isinstance(marker, str) else list(marker)
    if not rebuild and is_complete(folder, markers, key):
        return Artifact(folder, True)
    with cache_lock(folder):
        if not rebuild and is_complete(folder, markers, key):
            return Artifact(folder, True)
        if in_place:
            folder.mkdir(parents=True, exist_ok=True)
            build(folder)
            _check_markers(folder, markers, key)
        else:
            with atomic_dir(folder) as tmp:
                build(tmp)
                _check_markers(tmp, markers, key)
    return Artifact(folder, False)


def _check_markers(folder: Path, markers: list[str], key: str | None) -> None:
    if not is_complete(folder, markers, key):
        raise RuntimeError(
            f"building {folder} did not write its marker file(s) {', '.join(markers)}"
            + (f" with key {key}" if key else "")
        )

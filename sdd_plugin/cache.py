"""Where sdd-plugin keeps converted models and stage caches, how it names and fills them.

- :func:`cache_dir` -- the cache root;
- :func:`stable_hash`, :func:`file_hash`, :func:`fingerprint` -- cache keys of values, files, and
  of anything on disk or not (models, adapters, data folders, hub ids);
- :func:`write_json_atomic`, :func:`write_text_atomic`, :func:`atomic_dir` -- atomic writes;
- :func:`cache_lock` -- an inter-process lock (``filelock``) on one cache entry;
- :func:`check_output`, :func:`claim_output`, :func:`output_dir` -- validate a stage's output path
  before any work, hold its lock for the run (a second run into the same path fails fast), and
  publish the folder whole;
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
from glob import escape as glob_escape
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


def _umask() -> int:
    """The process umask (from /proc where it can be read without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file (0666) or folder (0777) under the umask.

    ``tempfile`` creates files 0600 and folders 0700 whatever the umask; what the atomic writers
    publish gets this mode instead (typically 0644 / 0755)."""
    return (0o777 if folder else 0o666) & ~_umask()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temp file + rename, so readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` through a temp file + rename (the file gets the umask's mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it is renamed to ``final``.

    If ``final`` already exists when the block ends (another process finished first), the new
    folder replaces it only when ``final`` is not a complete result, i.e. the old one is removed.
    On error the temp folder is deleted and ``final`` is untouched.
    """
    final = Path(final)
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temp_dir_beside(final: str | os.PathLike) -> Path:
    """A new empty folder ``.<name>.<random>.tmp`` beside ``final`` (umask mode), for :func:`replace_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, default_mode(folder=True))
    return tmp


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the folder ``tmp`` to ``final``, replacing (and then deleting) an existing ``final``."""
    final = Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def cache_lock(entry: str | os.PathLike) -> BaseFileLock:
    """An exclusive inter-process lock (``filelock.FileLock``) on one cache entry (a folder or file).

    Use it as a context manager; a second process asking for the same entry waits until the
    first releases it (``lock.acquire(blocking=False)`` raises ``filelock.Timeout`` instead). One
    process asking again while it holds the lock gets it again (one lock object per entry). The lock
    file lives in ``cache_dir()/locks`` (never inside the entry).
    """
    from filelock import FileLock

    path = Path(entry).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)[:80]
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(lock_dir / f"{name}-{stable_hash(str(path), 12)}.lock", is_singleton=True)


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


# ------------------------------------------------------------------------------- stage outputs


class OutputPathError(ValueError):
    """An output path a stage cannot write (a file where a folder goes, a non-empty folder without
    overwrite, a parent that is a file), or one another run is writing. The CLI exits 2 on it."""


def check_output(
    out: str | os.PathLike, *, overwrite: bool = False, file: bool = False, what: str = "--out"
) -> Path:
    """Check a stage's output path before any work; return it as a ``Path``.

    ``file=False``: ``out`` is a folder; it may be missing or empty, or non-empty with ``overwrite``.
    ``file=True``: ``out`` is a file; it may be missing, or exist with ``overwrite``. Either way the
    nearest existing parent must be a writable folder. Raises :class:`OutputPathError`.
    """
    path = Path(out).expanduser()
    if file:
        if path.is_dir():
            raise OutputPathError(f"{what} {path} is a folder; give a file name (or a folder without .jsonl)")
        if path.exists() and not overwrite:
            raise OutputPathError(
                f"{what} {path} already exists; pass --overwrite (overwrite=True) to replace it"
            )
    elif path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{what} {path} is a file, not a folder; give a folder path")
        if any(path.iterdir()) and not overwrite:
            raise OutputPathError(
                f"{what} {path} exists and is not empty; pass --overwrite (overwrite=True) to replace it, "
                "or choose a new folder"
            )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what} {path}: {parent} is a file, so no folder can be made below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: {parent} is not writable")
    return path


@contextmanager
def claim_output(
    out: str | os.PathLike, *, overwrite: bool = False, file: bool = False, what: str = "--out"
) -> Iterator[Path]:
    """:func:`check_output`, then hold ``out``'s :func:`cache_lock` until the block ends.

    Another run holding the lock makes this raise :class:`OutputPathError` at once (no waiting).
    The check is repeated under the lock, so of two runs started together the second one fails.
    Publish the results inside the block, e.g. with :func:`atomic_dir` (a folder appears whole).
    """
    from filelock import Timeout

    path = check_output(out, overwrite=overwrite, file=file, what=what)
    lock = cache_lock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise OutputPathError(
            f"{what} {path} is being written by another sdd run (lock {lock.lock_file}); "
            "wait for it to finish or choose another output"
        ) from None
    try:
        if lock.lock_counter == 1:  # not a re-entry of this process's own claim
            check_output(path, overwrite=overwrite, file=file, what=what)
            remove_temps(path)
        yield path
    finally:
        lock.release()


def remove_temps(path: str | os.PathLike) -> None:
    """Delete what a killed writer of ``path`` left beside it (:func:`atomic_dir`'s and
    :func:`write_text_atomic`'s temp names). Only called under ``path``'s lock, which every writer
    of ``path`` holds, so none of them is in use."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{glob_escape(path.name)}.*"):
        if p.name.endswith(".tmp") or ".old-" in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextmanager
def output_dir(out: str | os.PathLike, *, overwrite: bool = False, what: str = "--out") -> Iterator[Path]:
    """:func:`claim_output` of the folder ``out`` + :func:`atomic_dir`: yields a temp folder beside
    ``out`` that replaces it (whole) when the block succeeds; on error ``out`` is untouched."""
    with claim_output(out, overwrite=overwrite, what=what) as final, atomic_dir(final) as tmp:
        yield tmp

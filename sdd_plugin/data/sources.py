"""Where a data set comes from and how to load it: a local file (by its extension), a local folder,
or a Hugging Face hub id (``"id"`` or ``"id:config"``).

:func:`resolve_source` decides (no loading); :func:`load_source` loads it with HF ``datasets``.
Both raise ``FileNotFoundError`` for a path that looks local but does not exist and ``ValueError``
naming the source for anything that cannot be read (for a local file: the 1-based row, see
:mod:`sdd_plugin.data.file_checks`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Data file extension -> the HF ``datasets`` builder that reads its rows.
FILE_BUILDERS: dict[str, str] = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
#: Compression suffixes ``datasets`` decompresses on the fly (``data.jsonl.gz`` is a jsonl file).
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")


@dataclass(frozen=True)
class DataSource:
    """A resolved data source."""

    kind: str
    """``"file"``, ``"folder"`` or ``"hub"``."""
    location: str
    """The local path, or the hub id."""
    builder: str | None = None
    """For a file: the ``datasets`` builder of its extension (None: not a data file type)."""
    config: str | None = None
    """For a hub id: the config name (``"id:config"``)."""

    def __str__(self) -> str:
        return f"{self.location}:{self.config}" if self.config else self.location


def data_extension(path: str | os.PathLike) -> str:
    """The extension that says what a file holds, compression suffix removed (``a.jsonl.gz`` -> ``.jsonl``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def file_builder(path: str | os.PathLike) -> str | None:
    """The ``datasets`` builder for a data file's extension, or None for other files."""
    return FILE_BUILDERS.get(data_extension(path))


def looks_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a local path rather than a hub id: it exists, starts with ``.``,
    ``/`` or ``~``, has a data file extension, or has an extension and no ``/`` (``notes.xyz``)."""
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or Path(text).expanduser().exists():
        return True
    if text.startswith((".", "/", "~")) or data_extension(text) in FILE_BUILDERS:
        return True
    return bool(Path(text).suffix) and "/" not in text.strip("/")


def resolve_source(source: str | os.PathLike, config: str | None = None) -> DataSource:
    """Classify ``source`` without loading it (``FileNotFoundError`` for a missing local path)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        return DataSource("file", str(path), builder=file_builder(path))
    if path.is_dir():
        return DataSource("folder", str(path))
    if looks_local(source):
        raise FileNotFoundError(f"data file {text} does not exist")
    name, _, named_config = text.partition(":")
    return DataSource("hub", name, config=config or named_config or None)


def load_source(
    source: str | os.PathLike | DataSource,
    split: str = "train",
    limit: int | None = None,
    config: str | None = None,
):
    """Load ``source`` as a ``datasets.Dataset`` (first ``limit`` rows when given).

    A file is read with its extension's builder (its single ``train`` split); a folder and a hub id
    with ``datasets.load_dataset(..., split=split)``. A local file that is empty, not UTF-8, holds no
    rows or cannot be parsed raises ``ValueError`` naming the file and the first bad row. For a
    folder or hub id the loader's ``FileNotFoundError`` (e.g. an unknown hub id) and ``ValueError``
    (e.g. an unknown split) pass through; any other failure raises ``ValueError`` naming the
    source, with the loader's error chained."""
    import datasets

    src = source if isinstance(source, DataSource) else resolve_source(source, config)
    if src.kind == "file" and src.builder is None:
        raise ValueError(
            f"{src.location}: unsupported data file type {data_extension(src.location) or '(none)'!r}; "
            f"use one of {', '.join(FILE_BUILDERS)}"
        )
    if src.kind == "file":
        from .file_checks import check_text_file, diagnose_load_error

        check_text_file(src.location, src.builder)  # empty, or not UTF-8: file, row, byte offset
        try:
            ds = datasets.load_dataset(src.builder, data_files=src.location, split="train")
        except Exception as exc:  # malformed JSON, a column of two types, no rows, ...
            where = diagnose_load_error(src.location, src.builder)
            detail = where or f"cannot be read as {src.builder}: {type(exc).__name__}: {_loader_message(exc)}"
            raise ValueError(f"{src.location}: {detail}") from exc
        if len(ds) == 0:
            raise ValueError(f"{src.location}: no rows")
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return ds
    try:
        if src.kind == "folder":
            ds = datasets.load_dataset(src.location, split=split)
        else:
            ds = datasets.load_dataset(src.location, src.config, split=split)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # arrow schema errors, unreachable hub, ...
        detail = _loader_message(exc)
        raise ValueError(f"could not load dataset {str(src)!r} (split {split!r}): {detail}") from exc
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _loader_message(exc: BaseException) -> str:
    """The most specific message in an exception chain (``datasets`` wraps the parser's error in a
    generic "An error occurred while generating the dataset")."""
    messages = []
    while exc is not None and len(messages) < 8:
        text = str(exc).strip()
        if text:
            messages.append(text)
        exc = exc.__cause__ or exc.__context__
    return messages[-1] if messages else "no details"


def describe_source(source: Any) -> str:
    """A short name of a data source (path, hub id, or in-memory rows) for messages and reports."""
    if isinstance(source, (list, tuple)):
        return f"<{len(source)} in-memory rows>"
    return str(source)

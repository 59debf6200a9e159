"""Readable errors for local data files, naming the file, the 1-based row and the line.

The HF ``datasets`` loaders report some problems of a local file without saying where they are
(a byte that is not UTF-8, an empty file, a malformed JSON line, a column whose type changes).
:func:`check_text_file` finds the first two before loading (one pass over the bytes);
:func:`diagnose_load_error` looks for the others only after a loader has failed.

Rows are counted from 1: in a JSON-lines file row *n* is the *n*-th non-blank line, in a CSV file
the *n*-th line after the header.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_CHUNK = 1 << 20


def _open_bytes(path: Path) -> IO[bytes] | None:
    """The file's (decompressed) bytes, or None for a compression the standard library cannot read."""
    suffix = path.suffix.lower()
    if suffix in _OPENERS:
        return _OPENERS[suffix](path, "rb")
    if suffix in (".zst", ".zip"):
        return None
    return open(path, "rb")


def _locate(path: Path, pos: int, csv: bool) -> str:
    """``"row r (line l, column c)"`` of the byte at offset ``pos`` (rows: non-blank lines, after a
    CSV header)."""
    with _open_bytes(path) as f:  # type: ignore[union-attr]
        prefix = f.read(pos)
    lines = prefix.split(b"\n")
    line, column = len(lines), len(lines[-1]) + 1
    row = sum(1 for x in lines[:-1] if x.strip()) + 1 - (1 if csv else 0)
    if csv and row < 1:
        return f"the header (line {line}, column {column})"
    where = f"line {line}, column {column}" if line != row else f"column {column}"
    return f"row {row} ({where})"


def check_text_file(path: str | Path, builder: str | None) -> None:
    """Raise ``ValueError`` when a JSON / JSON-lines / CSV file is empty or is not UTF-8.

    The encoding error names the file, the 1-based row and line, the byte and its offset in the
    (decompressed) file. Parquet / arrow files and ``.zst`` / ``.zip`` files are not checked here."""
    path = Path(path)
    if builder not in ("json", "csv"):
        return
    stream = _open_bytes(path)
    if stream is None:
        return
    offset = 0  # of ``buf`` in the (decompressed) file
    content = False
    carry = b""
    with stream:
        while True:
            chunk = stream.read(_CHUNK)
            buf = carry + chunk
            carry = b""
            if not buf:
                break
            try:
                buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                if chunk and exc.reason == "unexpected end of data" and exc.start >= len(buf) - 3:
                    carry, buf = buf[exc.start :], buf[: exc.start]  # a character split by the chunk
                else:
                    pos = offset + exc.start
                    raise ValueError(
                        f"{path}: {_locate(path, pos, builder == 'csv')}: byte 0x{buf[exc.start]:02x} at "
                        f"byte offset {pos} is not UTF-8 ({exc.reason}); save the file as UTF-8"
                    ) from None
            content = content or bool(buf.strip())
            offset += len(buf)
            if not chunk:
                break
    if not content:
        raise ValueError(f"{path}: the file is empty (no rows)")


def _json_lines(path: Path) -> Iterator[tuple[int, str]]:
    stream = _open_bytes(path)
    if stream is None:
        return
    with stream:
        for number, raw in enumerate(stream, 1):
            yield number, raw.decode("utf-8", errors="replace").rstrip("\r\n")


_JSON_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def _diagnose_json(path: Path) -> str | None:
    stream = _open_bytes(path)
    if stream is None:
        return None
    with stream:
        head = stream.read(_CHUNK).lstrip()
    if head.startswith(b"["):  # one JSON document (a list of rows)
        with _open_bytes(path) as f:  # type: ignore[union-attr]
            text = f.read().decode("utf-8", errors="replace")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"line {exc.lineno}, column {exc.colno} (byte offset {exc.pos}): invalid JSON: {exc.msg}"
        if isinstance(doc, list) and not doc:
            return "the file holds an empty list (no rows)"
        for i, row in enumerate(doc if isinstance(doc, list) else [], 1):
            if not isinstance(row, dict):
                return f"row {i}: expected an object, got {_JSON_TYPES.get(type(row), type(row).__name__)}"
        return None
    first_seen: dict[str, tuple[str, int]] = {}
    row = 0
    for number, line in _json_lines(path):
        if not line.strip():
            continue
        row += 1
        where = f"row {row}" + (f" (line {number})" if number != row else "")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"{where}: invalid JSON: {exc.msg} at column {exc.colno}"
        if not isinstance(obj, dict):
            return f"{where}: expected a JSON object, got {_JSON_TYPES.get(type(obj), type(obj).__name__)}"
        for key, value in obj.items():
            if value is None:
                continue
            kind = _JSON_TYPES.get(type(value), type(value).__name__)
            seen = first_seen.setdefault(key, (kind, row))
            if seen[0] != kind:
                return (
                    f"{where}: field {key!r} is {kind} here but {seen[0]} in row {seen[1]}; "
                    "a column must hold one type"
                )
    if row == 0:
        return "the file is empty (no rows)"
    return None


def _diagnose_csv(path: Path) -> str | None:
    stream = _open_bytes(path)
    if stream is None:
        return None
    with stream:
        lines = [line for line in stream.read().splitlines() if line.strip()]
    if len(lines) == 1:
        return "the file has a header line but no rows"
    return None


def diagnose_load_error(path: str | Path, builder: str | None) -> str | None:
    """After a loader failed on a local file: what is wrong and where (``"row 3: invalid JSON: ..."``),
    or None when nothing specific is found."""
    path = Path(path)
    try:
        if builder == "json":
            return _diagnose_json(path)
        if builder == "csv":
            return _diagnose_csv(path)
    except OSError:  # e.g. a corrupt .gz: the loader's own error says enough
        return None
    return None

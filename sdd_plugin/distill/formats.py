"""Fine-tuning dataset formats: read (instruction, reference response, expected answer) from a row
and write a new response back, keeping every other field of the row as it was.

Formats (``FORMATS``):

- ``alpaca``: ``instruction``, optional ``input``, ``output`` (the response).
- ``dolly``: ``instruction``, optional ``context`` (shown like alpaca's ``input``), ``response``.
- ``messages`` (alias ``chat``): ``messages`` = ``[{"role", "content"}, ...]``; the last assistant turn
  is the response, the turns before it are the context.
- ``sharegpt``: ``conversations`` = ``[{"from", "value"}, ...]`` (``human``/``gpt``/``system``).
- ``gsm8k``: ``question``, ``answer`` (worked solution ending in ``#### n``). The reference shown to
  the teacher has GSM8K's ``<<48/2=24>>`` calculator annotations stripped; the original answer is
  kept untouched for the fallback.
- ``openmath`` (OpenMathInstruct): ``question``, ``generated_solution``, ``expected_answer``.

Data is loaded with HF ``datasets`` through :mod:`sdd_plugin.data.sources`: local json / jsonl /
jsonl.gz / parquet / csv files, a local folder, a hub id, or an in-memory list of rows. Every row
is validated up front, before any model loads.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..data.sources import describe_source, load_source

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "FORMAT_FOR_AXOLOTL_TYPE",
    "Example",
    "FormatSpec",
    "detect_format",
    "drop_empty_responses",
    "format_for_axolotl_type",
    "get_format",
    "load_rows",
    "read_examples",
    "validate_rows",
]


@dataclass
class Example:
    """What the distiller needs from one row."""

    instruction: str
    """The task as one text (context turns of a chat rendered into it)."""
    reference: str
    """The original response, untouched (the fallback)."""
    prompt_reference: str
    """The reference as shown to the teacher (e.g. GSM8K calculator annotations stripped)."""
    expected: str | None = None
    """A final answer given by the dataset (``expected_answer``, GSM8K's ``#### n``)."""
    messages: list[dict[str, str]] = field(default_factory=list)
    """The plain prompt as chat messages (no reference), used by the NLL meter."""


class RowError(ValueError):
    """A row lacks a field its format needs."""


def _text(row: dict, key: str, *, optional: bool = False) -> str:
    value = row.get(key)
    if value is None:
        if optional:
            return ""
        raise RowError(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a CSV column of numbers read as ints
    if not isinstance(value, str):
        raise RowError(f"{key} (expected a string, got {type(value).__name__})")
    return value


def _join(instruction: str, extra: str) -> str:
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra and extra.strip() else instruction.strip()


_CALC_RE = re.compile(r"<<[^<>]*>>")
_HASH_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)

_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "tool": "tool",
}


@dataclass
class FormatSpec:
    """How one dataset format is read and written."""

    name: str
    required: tuple[str, ...]
    response_field: str
    read: Callable[[dict], Example]
    write: Callable[[dict, str], dict]
    default_template: str = "general"
    default_checker: str = "general"
    finalize: Callable[[str, Example], str] | None = None
    """Called on an *accepted* rewrite, e.g. to append GSM8K's ``#### n`` line."""
    description: str = ""

    def example(self, row: dict) -> Example:
        """Read one row (raises :class:`RowError` naming the missing field)."""
        return self.read(row)

    def with_response(self, row: dict, response: str) -> dict:
        """A copy of ``row`` with its response replaced; every other field as it was."""
        return self.write(row, response)


# --------------------------------------------------------------------------- instruction formats


def _instruction_format(name: str, extra: str, response: str) -> FormatSpec:
    def read(row: dict) -> Example:
        instruction = _text(row, "instruction")
        reference = _text(row, response)
        prompt = _join(instruction, _text(row, extra, optional=True))
        return Example(prompt, reference, reference, None, [{"role": "user", "content": prompt}])

    def write(row: dict, text: str) -> dict:
        out = dict(row)
        out[response] = text
        return out

    return FormatSpec(
        name,
        ("instruction", response),
        response,
        read,
        write,
        description=f"instruction, optional {extra}, {response}",
    )


# --------------------------------------------------------------------------------- math formats


def _gsm8k_read(row: dict) -> Example:
    question = _text(row, "question")
    answer = _text(row, "answer")
    m = _HASH_RE.search(answer)
    expected = m.group(1).strip() if m else None
    shown = _CALC_RE.sub("", answer)
    return Example(question.strip(), answer, shown, expected, [{"role": "user", "content": question.strip()}])


def _gsm8k_write(row: dict, text: str) -> dict:
    out = dict(row)
    out["answer"] = text
    return out


def _gsm8k_finalize(text: str, ex: Example) -> str:
    """Ensure the response ends with GSM8K's ``#### n`` line so GSM8K-style parsers work."""
    text = text.rstrip()
    if ex.expected is not None and not re.search(r"####\s*\S", text):
        text = f"{text}\n#### {ex.expected}"
    return text


def _openmath_read(row: dict) -> Example:
    question = _text(row, "question")
    solution = _text(row, "generated_solution")
    expected = row.get("expected_answer")
    if expected is None:
        raise RowError("expected_answer")
    expected = str(expected)
    return Example(
        question.strip(), solution, solution, expected, [{"role": "user", "content": question.strip()}]
    )


def _openmath_write(row: dict, text: str) -> dict:
    out = dict(row)
    out["generated_solution"] = text
    return out


def _openmath_finalize(text: str, ex: Example) -> str:
    """Ensure the response states ``\\boxed{answer}`` like OpenMathInstruct's solutions."""
    text = text.rstrip()
    if ex.expected is not None and "\\boxed{" not in text:
        text = f"{text}\n\nThe final answer is $\\boxed{{{ex.expected}}}$."
    return text


# --------------------------------------------------------------------------------- chat formats


def _chat_format(name: str, list_field: str) -> FormatSpec:
    def turns(row: dict) -> list[tuple[str, str]]:
        conv = row.get(list_field)
        if conv is None:
            raise RowError(list_field)
        if not isinstance(conv, list) or not conv:
            raise RowError(f"{list_field} (expected a non-empty list of turns)")
        out = []
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict):
                raise RowError(f"{list_field}[{i}] (expected an object)")
            role_key, text_key = ("role", "content") if turn.get("role") is not None else ("from", "value")
            role = turn.get(role_key)
            if role is None:
                raise RowError(f"{list_field}[{i}].role")
            role = _ROLE_ALIASES.get(str(role).lower(), str(role).lower())
            content = turn.get(text_key)
            if not isinstance(content, str):
                raise RowError(f"{list_field}[{i}].{text_key}")
            out.append((role, content))
        return out

    def last_assistant(conv: list[tuple[str, str]]) -> int:
        for i in range(len(conv) - 1, -1, -1):
            if conv[i][0] == "assistant":
                return i
        raise RowError(f"{list_field} (no assistant turn to rewrite)")

    def read(row: dict) -> Example:
        conv = turns(row)
        i = last_assistant(conv)
        context = conv[:i]
        if not any(role == "user" for role, _ in context):
            raise RowError(f"{list_field} (no user turn before the last assistant turn)")
        messages = [{"role": role, "content": content} for role, content in context]
        system = "\n\n".join(c.strip() for r, c in context if r == "system")
        dialog = [(r, c) for r, c in context if r != "system"]
        if len(dialog) == 1:
            instruction = dialog[0][1].strip()
        else:  # multi-turn: the conversation so far, then the turn to answer
            instruction = "\n\n".join(f"{r.capitalize()}: {c.strip()}" for r, c in dialog)
        if system:
            instruction = f"{system}\n\n{instruction}"
        reference = conv[i][1]
        return Example(instruction, reference, reference, None, messages)

    def write(row: dict, text: str) -> dict:
        out = dict(row)
        conv = copy.deepcopy(row[list_field])
        i = last_assistant(turns(row))
        key = "content" if conv[i].get("role") is not None else "value"
        conv[i][key] = text
        out[list_field] = conv
        return out

    return FormatSpec(
        name,
        (list_field,),
        list_field,
        read,
        write,
        description=f"{list_field}: chat turns; the last assistant turn is rewritten",
    )


FORMATS: dict[str, FormatSpec] = {
    "alpaca": _instruction_format("alpaca", "input", "output"),
    "dolly": _instruction_format("dolly", "context", "response"),
    "messages": _chat_format("messages", "messages"),
    "sharegpt": _chat_format("sharegpt", "conversations"),
    "gsm8k": FormatSpec(
        "gsm8k",
        ("question", "answer"),
        "answer",
        _gsm8k_read,
        _gsm8k_write,
        "math",
        "math",
        _gsm8k_finalize,
        "question, answer ending in '#### n'",
    ),
    "openmath": FormatSpec(
        "openmath",
        ("question", "generated_solution", "expected_answer"),
        "generated_solution",
        _openmath_read,
        _openmath_write,
        "math",
        "math",
        _openmath_finalize,
        "OpenMathInstruct: question, generated_solution, expected_answer",
    ),
}
_ALIASES = {"chat": "messages", "chat_template": "messages", "openmathinstruct": "openmath"}

#: Axolotl dataset ``type`` -> format name here.
FORMAT_FOR_AXOLOTL_TYPE: dict[str, str] = {
    "alpaca": "alpaca",
    "alpaca_chat": "alpaca",
    "alpaca_w_system": "alpaca",
    "alpaca:chat": "alpaca",
    "chat_template": "messages",
    "messages": "messages",
    "sharegpt": "sharegpt",
    "dolly": "dolly",
    "gsm8k": "gsm8k",
    "openmath": "openmath",
}


def get_format(name: str) -> FormatSpec:
    """The format called ``name`` (or an alias); unknown names raise a ValueError listing the known ones."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in FORMATS:
        raise ValueError(
            f"unknown dataset format {name!r}; known formats: {', '.join(sorted(FORMATS))} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return FORMATS[key]


def format_for_axolotl_type(axolotl_type: str | dict | None) -> str:
    """Map an axolotl dataset ``type`` to a format name here (ValueError listing the known types)."""
    if isinstance(axolotl_type, str) and axolotl_type in FORMAT_FOR_AXOLOTL_TYPE:
        return FORMAT_FOR_AXOLOTL_TYPE[axolotl_type]
    if isinstance(axolotl_type, str) and axolotl_type.split(".")[0] in FORMAT_FOR_AXOLOTL_TYPE:
        return FORMAT_FOR_AXOLOTL_TYPE[axolotl_type.split(".")[0]]  # e.g. "alpaca.load_..."
    raise ValueError(
        f"cannot self-distill axolotl dataset type {axolotl_type!r}; supported types: "
        f"{', '.join(sorted(FORMAT_FOR_AXOLOTL_TYPE))}"
    )


def detect_format(row: dict) -> str:
    """Guess the format of a row from its fields (ValueError when nothing fits)."""
    keys = set(row)
    if {"question", "generated_solution"} <= keys:
        return "openmath"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"instruction", "response"} <= keys:
        return "dolly"
    raise ValueError(f"cannot tell the dataset format from fields {sorted(keys)}; pass a format")


# ------------------------------------------------------------------------------------- loading


def load_rows(
    source: str | os.PathLike | Sequence[dict],
    format: str | None = None,
    split: str = "train",
    limit: int | None = None,
    validate: bool = True,
    config: str | None = None,
) -> list[dict]:
    """Load rows from a local file/folder, a hub id or a list of dicts, and validate them.

    Local files, folders and hub ids (``config``: the hub config name) are loaded by
    :func:`sdd_plugin.data.sources.load_source`. ``limit`` (>= 1) keeps the first N rows. No rows
    at all is an error. With ``format`` set (and ``validate``), every row is checked; a missing
    field raises a ValueError naming the file, the 1-based row and the field.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of rows, got {limit!r}")
    if isinstance(source, (list, tuple)):
        rows = [dict(r) for r in source[: limit if limit is not None else None]]
    else:
        rows = load_source(source, split=split, limit=limit, config=config).to_list()
    if not rows:
        raise ValueError(f"{describe_source(source)}: no rows")
    if format is not None and validate:
        validate_rows(rows, format, describe_source(source))
    return rows


def drop_empty_responses(
    rows: list[dict], examples: list[Example], source: str = "<rows>", strict: bool = False
) -> tuple[list[dict], list[Example], list[int], list[int]]:
    """Leave out the rows whose response is empty (or only white space): a rewrite of nothing is
    not a distillation, and an empty training target teaches nothing.

    Returns ``(rows, examples, kept, skipped)``, the last two as 1-based input row numbers; logs a
    warning naming the skipped rows. ``strict``: raise ``ValueError`` naming them instead. No row
    left is an error either way."""
    empty = [i for i, ex in enumerate(examples, 1) if not ex.reference.strip()]
    if not empty:
        return rows, examples, list(range(1, len(rows) + 1)), []
    shown = ", ".join(map(str, empty[:20])) + (f" and {len(empty) - 20} more" if len(empty) > 20 else "")
    if strict or len(empty) == len(rows):
        why = "every row" if len(empty) == len(rows) else f"{len(empty)} of {len(rows)} rows"
        raise ValueError(f"{source}: {why} have an empty response (rows {shown}); fill or remove them")
    log.warning(
        "%s: skipping %d of %d rows with an empty response (rows %s); pass --strict to stop instead",
        source,
        len(empty),
        len(rows),
        shown,
    )
    drop = set(empty)
    kept = [i for i in range(1, len(rows) + 1) if i not in drop]
    return [rows[i - 1] for i in kept], [examples[i - 1] for i in kept], kept, empty


def validate_rows(rows: Sequence[dict], format: str, source: str = "<rows>") -> list[Example]:
    """Read every row; the first bad one raises ``ValueError("{source}: row {n}: missing field ...")``
    (``n`` counted from 1)."""
    return read_examples(rows, format, source)


def read_examples(rows: Sequence[dict], format: str, source: str = "<rows>") -> list[Example]:
    """:class:`Example` of every row (ValueError naming source, 1-based row and field on bad rows)."""
    spec = get_format(format)
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: row {i}: expected an object, got {type(row).__name__}")
        try:
            out.append(spec.example(row))
        except RowError as exc:
            raise ValueError(
                f"{source}: row {i}: missing or invalid field {exc.args[0]!s} "
                f"(format {spec.name!r} needs {', '.join(spec.required)})"
            ) from None
    return out

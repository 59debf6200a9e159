"""Final-answer extraction and comparison for math rewrites.

Explicit answer markers win over "the last number in the text":

1. ``#### n`` (GSM8K), ``\\boxed{n}`` (MATH / OpenMathInstruct), ``The (final) answer is n`` and
   ``Answer: n`` are *explicit* markers; every one found is returned, in order of appearance.
2. Only when there is no explicit marker, the last number in the text is the answer.

Numbers are normalised through :class:`fractions.Fraction`, so ``1,000``, ``1000.0``, ``$1000`` and
``1000%`` compare equal to ``1000``, and ``0.5`` equals ``1/2`` and ``\\frac{1}{2}``. Nothing here
raises on arbitrary text (property-tested with hypothesis).
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "answers_equal",
    "calculator_results",
    "explicit_answers",
    "extract_final_answer",
    "extract_final_answers",
    "last_number",
    "normalize_answer",
    "normalize_number",
    "numbers_in",
    "reference_answer",
]

#: Longest digit run treated as a number (longer runs compare as plain strings; also keeps
#: Python's int-conversion digit limit out of reach).
_MAX_DIGITS = 64

_NUM = (
    r"(?:(?<![\w)\]])[-−–])?\$?\s?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?%?"
    r"|(?:(?<![\w)\]])[-−])?(?<!\d)\.\d+"
)
_NUM_RE = re.compile(_NUM)
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([-−]?[\d.,]+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac(\d)(\d)")
_HASH_RE = re.compile(r"####[ \t]*((?:(?!####)[^\n])*)")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE_RE = re.compile(
    r"(?:\bthe\s+(?:final\s+)?answer\s+is|\bfinal\s+answer\s*(?:is)?\s*[:=]|\banswer\s*[:=])\s*:?[ \t]*",
    re.IGNORECASE,
)
_PLAIN_NUM_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|(?<!\d)\.\d+")
_CALC_RE = re.compile(r"<<[^<>]*=([^<>=]*)>>")
_LATEX_NOISE = re.compile(r"\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|\\[,;!: ]|\\left|\\right|\\\$|\$")


def _to_fraction(text: str) -> Fraction | None:
    s = text.strip().replace("−", "-").replace("–", "-").replace("$", "").replace("%", "")
    s = s.replace(",", "").replace(" ", "")
    s = s.rstrip(".")
    if not s or sum(ch.isdigit() for ch in s) > _MAX_DIGITS:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = Fraction(num) / Fraction(den)
        else:
            value = Fraction(s)
    except (ValueError, ZeroDivisionError, ArithmeticError):
        return None
    return value


def normalize_number(text: str) -> str | None:
    """Canonical string of a number (``"1,234.50"`` -> ``"2469/2"``, ``"-$5"`` -> ``"-5"``), or ``None``.

    Accepts commas as thousands separators, a leading minus (also the Unicode one), decimals,
    ``a/b`` fractions, ``\\frac{a}{b}``, and a ``$`` or ``%`` sign.
    """
    if not isinstance(text, str):
        return None
    s = text.strip()
    m = _FRAC_RE.fullmatch(s) or _FRAC_SHORT_RE.fullmatch(s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    s = _LATEX_NOISE.sub("", s).strip().rstrip(".").strip()
    if not re.fullmatch(_NUM, s):
        return None
    value = _to_fraction(s)
    if value is None:
        return None
    return _canonical(value)


def _canonical(value: Fraction) -> str:
    """``5``, ``-2.5`` (finite decimals) or ``1/3``."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = value * 10**places
    sign = "-" if scaled < 0 else ""
    digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def normalize_answer(text: str) -> str:
    """Canonical form of a final answer: a normalised number when it is one, else squashed text."""
    text = text or ""
    boxed = _boxed_contents(text)
    if boxed and text.strip().startswith(("\\boxed", "$\\boxed", "\\fbox")):
        text = boxed[0][1]
    num = normalize_number(text)
    if num is not None:
        return num
    # a number followed by units ("18 dollars", "$18 per day") -> the number
    s = _LATEX_NOISE.sub("", text or "").strip()
    m = _NUM_RE.match(s)
    if m:
        num = normalize_number(m.group(0))
        if num is not None:
            return num
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """``(position, content)`` of every ``\\boxed{...}`` with balanced braces."""
    found = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            found.append((m.start(), text[m.end() : i - 1]))
    return found


def _first_number(span: str) -> str | None:
    frac = _FRAC_RE.search(span)
    m = _NUM_RE.search(span)
    if frac and (not m or frac.start() <= m.start()):
        return frac.group(0)
    return m.group(0) if m else None


def explicit_answers(text: str) -> list[str]:
    """Every answer stated with an explicit marker, normalised, in order of appearance."""
    if not isinstance(text, str):
        return []
    found: list[tuple[int, str]] = []
    for m in _HASH_RE.finditer(text):
        content = m.group(1).strip()
        if content:
            found.append((m.start(), normalize_answer(content)))
    for pos, content in _boxed_contents(text):
        if content.strip():
            found.append((pos, normalize_answer(content)))
    for m in _PHRASE_RE.finditer(text):
        span = text[m.end() : m.end() + 60].split("\n", 1)[0]
        if _BOXED_RE.match(span.lstrip("$ ")):
            continue  # "The answer is \boxed{5}": the box is already counted
        # only the sentence right after the marker: "The answer is 18. She also ..." -> 18
        span = re.split(r"(?<=[^\d\s])\.(?:\s|$)|\.\s", span, maxsplit=1)[0]
        if "=" in span:  # "The answer is 10 + 13 = 23" -> the result after the last "="
            span = span.rsplit("=", 1)[1]
        num = _first_number(span)
        if num is not None:
            found.append((m.start(), normalize_answer(num)))
    found.sort(key=lambda item: item[0])
    return [ans for _, ans in found if ans]


def last_number(text: str) -> str | None:
    """The last number in ``text``, normalised, or ``None``."""
    if not isinstance(text, str):
        return None
    candidates = [(m.start(), m.group(0)) for m in _NUM_RE.finditer(text)]
    candidates += [(m.start(), m.group(0)) for m in _FRAC_RE.finditer(text)]
    for _, raw in sorted(candidates, reverse=True):
        num = normalize_number(raw)
        if num is not None:
            return num
    return None


def extract_final_answers(text: str) -> list[str]:
    """The final answers a text states (normalised): all explicit markers, else the last number.

    More than one *distinct* value means the text contradicts itself.
    """
    explicit = explicit_answers(text)
    if explicit:
        return explicit
    last = last_number(text)
    return [last] if last is not None else []


def extract_final_answer(text: str) -> str | None:
    """The single final answer of ``text`` (the last one stated), or ``None`` when there is none."""
    answers = extract_final_answers(text)
    return answers[-1] if answers else None


def reference_answer(reference: str, expected: str | None = None) -> str | None:
    """The normalised final answer of a reference: ``expected`` when given, else its ``#### n``,
    ``\\boxed{}`` or answer phrase (the last one), else its last number."""
    if expected is not None and str(expected).strip():
        return normalize_answer(str(expected))
    return extract_final_answer(reference or "")


def answers_equal(a: str | None, b: str | None) -> bool:
    """Whether two answers are the same: as numbers (``0.5 == 1/2 == 0.50``) or as squashed text."""
    if a is None or b is None:
        return False
    na, nb = normalize_answer(str(a)), normalize_answer(str(b))
    if not na or not nb:
        return False
    fa, fb = _to_fraction(na), _to_fraction(nb)
    if fa is not None and fb is not None:
        return fa == fb
    return na == nb


def numbers_in(text: str) -> set[str]:
    """Every number written in ``text``, normalised (``1,000`` and ``1000.0`` -> ``1000``): each
    number as :func:`last_number` reads it (sign, ``$``, ``%``, ``a/b``) and each plain digit run
    on its own (so ``48/2`` yields ``48``, ``2`` and ``24``)."""
    if not isinstance(text, str):
        return set()
    found = set()
    for regex in (_NUM_RE, _FRAC_RE, _PLAIN_NUM_RE):
        for m in regex.finditer(text):
            num = normalize_number(m.group(0))
            if num is not None:
                found.add(num)
    return found


def calculator_results(reference: str) -> list[str]:
    """The results ``c`` of a GSM8K solution's calculator annotations ``<<a*b=c>>``, normalised,
    in order (values that are not numbers are skipped)."""
    if not isinstance(reference, str):
        return []
    results = (normalize_number(m.group(1)) for m in _CALC_RE.finditer(reference))
    return [r for r in results if r is not None]

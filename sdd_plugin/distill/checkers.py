"""Built-in answer checkers: ``general``, ``math`` and ``math_strict``.

A checker returns ``None`` to accept a teacher rewrite, or a short reason code; the distiller then
keeps the original response for that row and counts the reason in its report.

Reason codes: ``empty``, ``mentions_reference`` (talks about the reference answer),
``mentions_prompt`` (talks about "your response", "now it's your turn", ...), and for ``math`` also
``no_answer``, ``multiple_answers`` (states two different final answers), ``no_reference_answer``
and ``answer_mismatch``; ``math_strict`` adds ``missing_intermediate`` (a result of the reference's
calculator annotations is not written in the rewrite).
"""

from __future__ import annotations

import re

from ..hookspecs import hookimpl
from .answers import answers_equal, calculator_results, extract_final_answers, numbers_in, reference_answer

#: Phrases that show the rewrite talks about the prompt instead of answering it.
REFERENCE_PATTERNS = (
    r"\breference (?:answer|response|solution)s?\b",
    r"\bthe (?:given|provided) (?:answer|response|solution)\b",
    r"\b(?:according to|based on|as in|from|using|following) the reference\b",
)
PROMPT_PATTERNS = (
    r"\byour (?:own )?(?:response|answer|solution)\b",
    r"\bmy (?:own )?response\b",
    r"\bnow it'?s your turn\b",
    r"\bit'?s your turn\b",
    r"^\W*your turn\b",
    r"\b(?:as|like) an ai(?: language model)?\b",
    r"\bbelow (?:is|are) an instruction\b",
    r"#+\s*(?:instruction|reference answer|question|response)\s*:",
)
_REFERENCE_RE = re.compile("|".join(REFERENCE_PATTERNS), re.IGNORECASE)
_PROMPT_RE = re.compile("|".join(PROMPT_PATTERNS), re.IGNORECASE | re.MULTILINE)


def prompt_talk_reason(rewrite: str) -> str | None:
    """The general rules: ``empty``, ``mentions_reference`` or ``mentions_prompt``, else ``None``."""
    if not isinstance(rewrite, str) or not rewrite.strip():
        return "empty"
    if _REFERENCE_RE.search(rewrite):
        return "mentions_reference"
    if _PROMPT_RE.search(rewrite):
        return "mentions_prompt"
    return None


class GeneralChecker:
    """Rejects empty rewrites and rewrites that talk about the prompt (SDFT's filter)."""

    name = "general"

    def check(self, rewrite: str, reference: str, expected: str | None = None) -> str | None:
        """Return ``None`` to accept, else the reason code."""
        return prompt_talk_reason(rewrite)


class MathChecker:
    """The general rules, then: the rewrite states exactly one final answer, equal to the reference's.

    The reference answer is ``expected`` when the dataset provides one (OpenMathInstruct's
    ``expected_answer``), else the reference's ``#### n`` / ``\\boxed{}`` / "The answer is n".
    """

    name = "math"

    def check(self, rewrite: str, reference: str, expected: str | None = None) -> str | None:
        """Return ``None`` to accept, else the reason code."""
        reason = prompt_talk_reason(rewrite)
        if reason:
            return reason
        want = reference_answer(reference, expected)
        if want is None:
            return "no_reference_answer"
        stated = extract_final_answers(rewrite)
        if not stated:
            return "no_answer"
        first = stated[0]
        if any(not answers_equal(first, other) for other in stated[1:]):
            return "multiple_answers"
        if not answers_equal(first, want):
            return "answer_mismatch"
        return None


class MathStrictChecker(MathChecker):
    """The ``math`` rules, then: every intermediate result of the reference (GSM8K's ``<<a*b=c>>``
    annotations: each ``c``) is written as a number in the rewrite (``1,000`` = ``1000``,
    ``5.0`` = ``5``; either sign). A reference without annotations is checked as by ``math``."""

    name = "math_strict"

    def check(self, rewrite: str, reference: str, expected: str | None = None) -> str | None:
        """Return ``None`` to accept, else the reason code."""
        reason = super().check(rewrite, reference, expected)
        if reason:
            return reason
        written = numbers_in(rewrite)
        for value in calculator_results(reference):
            negated = value[1:] if value.startswith("-") else "-" + value
            if value not in written and negated not in written:
                return "missing_intermediate"
        return None


@hookimpl
def sdd_answer_checkers():
    """The built-in checkers."""
    return [GeneralChecker(), MathChecker(), MathStrictChecker()]

"""Final-answer extraction and the math checker, with hypothesis properties."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdd_plugin.distill.answers import (
    answers_equal,
    extract_final_answer,
    extract_final_answers,
    normalize_answer,
    normalize_number,
    reference_answer,
)
from sdd_plugin.distill.checkers import MathChecker

MATH = MathChecker()


@pytest.mark.parametrize(
    "text, want",
    [
        ("#### 1,234", ["1234"]),
        ("so she pays $1,234.50 in total.\n#### 1234.5", ["1234.5"]),
        ("The answer is -7.", ["-7"]),
        ("The answer is −7", ["-7"]),
        ("Answer: 0.50", ["0.5"]),
        ("\\boxed{\\frac{3}{4}}", ["0.75"]),
        ("The final answer is $\\boxed{12}$.", ["12"]),
        ("The answer is 18 dollars. She also buys 3 apples.", ["18"]),
        ("The answer is 10 + 13 = 23.", ["23"]),
        ("She has 10 - 4 = 6 apples left", ["6"]),  # no marker: the last number
        ("It takes 2/3 of an hour", ["2/3"]),
        ("50% of them, so 25 cats.\n#### 25", ["25"]),
        ("#### 15 … The answer is 15. #### 5", ["15", "15", "5"]),
        ("no numbers at all", []),
        ("1/0", []),
    ],
)
def test_extract_final_answers(text, want):
    assert extract_final_answers(text) == want


def test_markers_win_over_last_number():
    text = "The answer is 42. Check: 40 + 2 = 42, and 7 days later it is 49."
    assert extract_final_answer(text) == "42"


@pytest.mark.parametrize(
    "a, b, equal",
    [
        ("1,000", "1000", True),
        ("1000.0", "1000", True),
        ("$1000", "1000", True),
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", ".5", True),
        ("-3", "3", False),
        ("12", "12.01", False),
        ("x+1", "x + 1", True),
        (None, "1", False),
    ],
)
def test_answers_equal(a, b, equal):
    assert answers_equal(a, b) is equal


def test_reference_answer_prefers_expected_field():
    assert reference_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert reference_answer("some text 3", expected="\\frac{1}{4}") == "0.25"


def test_normalize_number_rejects_huge_and_garbage():
    assert normalize_number("1" * 500) is None
    assert normalize_number("abc") is None
    assert normalize_number("-$1,200") == "-1200"


# ----------------------------------------------------------------------------- properties

values = st.one_of(
    st.integers(min_value=-(10**9), max_value=10**9).map(Fraction),
    st.tuples(st.integers(-(10**6), 10**6), st.integers(1, 4)).map(lambda t: Fraction(t[0], 10 ** t[1])),
    st.tuples(st.integers(-1000, 1000), st.integers(1, 50)).map(lambda t: Fraction(*t)),
)


def spell(value: Fraction, style: int) -> str:
    """One of several ways a dataset or a model writes a number."""
    if value.denominator == 1:
        n = value.numerator
        return [f"{n}", f"{n:,}", f"${n:,}" if n >= 0 else f"-${-n:,}", f"{n}.0", f"\\boxed{{{n}}}"][
            style % 5
        ]
    if (value * 10000).denominator == 1:
        return [f"{float(value):.4f}".rstrip("0"), f"{value.numerator}/{value.denominator}"][style % 2]
    return (
        [f"{value.numerator}/{value.denominator}", f"\\frac{{{value.numerator}}}{{{value.denominator}}}"][
            style % 2
        ]
        if value > 0
        else f"{value.numerator}/{value.denominator}"
    )


MARKERS = ["\n#### {}", "\nThe answer is {}.", "\nAnswer: {}", "\nSo the final answer is \\boxed{{{}}}."]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_extraction_never_raises(text):
    answers = extract_final_answers(text)
    # every answer comes out normalised: non-empty, and normalising it again changes nothing
    assert all(a and normalize_answer(a) == a for a in answers), answers
    assert MATH.check(text, text) in {None, *REASONS}
    assert MATH.check(text, "#### 3", expected=text) in {None, *REASONS}


REASONS = {
    "empty",
    "mentions_reference",
    "mentions_prompt",
    "no_answer",
    "multiple_answers",
    "no_reference_answer",
    "answer_mismatch",
}


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300), values, values, st.integers(0, 9), st.integers(0, 9), st.sampled_from(MARKERS))
def test_never_accepts_a_different_answer(prefix, stated, reference, s1, s2, marker):
    if stated == reference:
        return
    rewrite = prefix + marker.format(
        spell(stated, s1).replace("\\boxed{", "").rstrip("}") if "boxed" in marker else spell(stated, s1)
    )
    assert MATH.check(rewrite, f"work\n#### {spell(reference, s2)}") is not None
    assert MATH.check(rewrite, "work", expected=spell(reference, s2)) is not None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghij klmnop,\n", max_size=200), values, st.integers(0, 9), st.integers(0, 9))
def test_accepts_the_same_answer_however_written(prefix, value, s1, s2):
    rewrite = f"{prefix}\n#### {spell(value, s1)}"
    assert MATH.check(rewrite, f"work\n#### {spell(value, s2)}") is None

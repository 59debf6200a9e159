"""SDFT templates through the real default tokenizer, and the general/math/math_strict answer checkers."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdd_plugin.distill.answers import calculator_results, numbers_in
from sdd_plugin.distill.stage import render_prompt
from sdd_plugin.plugins import available, get_checker, get_template


def test_builtins_are_registered():
    assert {"general", "math"} <= set(available("template"))
    assert {"general", "math", "math_strict"} <= set(available("checker"))
    assert "hf" in available("backend")


def test_math_template_through_the_default_chat_template(default_model):
    from sdd_plugin.models import load_tokenizer

    tok = load_tokenizer(default_model)
    messages, prefix = get_template("math").render("What is 2+3?", "2+3=5\n#### 5")
    text = render_prompt(tok, messages, prefix)
    assert text.startswith("<|im_start|>")
    assert "You are an expert in math." in text and "What is 2+3?" in text and "#### 5" in text
    assert text.endswith("<|im_start|>assistant\nGreat! Let's think step by step.")


def test_general_template(default_model):
    from sdd_plugin.models import load_tokenizer

    tok = load_tokenizer(default_model)
    messages, prefix = get_template("general").render("Name a colour.", "Blue.")
    assert prefix == ""
    text = render_prompt(tok, messages, prefix)
    assert "Using the reference answer as a guide, write your own response." in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "rewrite, reason",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("Based on the reference answer, the capital is Paris.", "mentions_reference"),
        ("Here is my response: Paris.", "mentions_prompt"),
        ("Your turn! What is the capital of Spain?", "mentions_prompt"),
        ("Paris. Now it's your turn to answer.", "mentions_prompt"),
        ("Write your own response here.", "mentions_prompt"),
        ("The capital of France is Paris.", None),
    ],
)
def test_general_checker(rewrite, reason):
    assert get_checker("general").check(rewrite, "Paris.") == reason


@pytest.mark.parametrize(
    "rewrite, reference, expected, reason",
    [
        # seen with the default model: two different final answers for a reference of 5
        ("#### 15 … The answer is 15. #### 5", "3+2=5\n#### 5", None, "multiple_answers"),
        ("She sells 1,200 cups.\n#### 1,200", "#### 1200", None, None),
        ("The temperature drops to -4 degrees. The answer is -4.", "#### -4", None, None),
        ("Each gets 2.50 dollars.\n#### 2.5", "#### 2.5", None, None),
        ("So $\\boxed{\\frac{1}{2}}$.", "", "0.5", None),
        ("The answer is 3/4", "we get \\boxed{0.75}", None, None),
        ("So 6 * 7 = 42 in total.", "#### 42", None, None),  # no marker: the last number
        ("So 6 * 7 = 42. The answer is 41.", "#### 42", None, "answer_mismatch"),
        ("I cannot solve this.", "#### 42", None, "no_answer"),
        ("The answer is 4.", "no final answer here", None, "no_reference_answer"),
        ("Using the reference answer: #### 5", "#### 5", None, "mentions_reference"),
    ],
)
def test_math_checker(rewrite, reference, expected, reason):
    assert get_checker("math").check(rewrite, reference, expected) == reason


def _gsm8k_rows(shared_data, split: str) -> list[dict]:
    with open(shared_data / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_math_strict_rejects_right_number_wrong_working(shared_data):
    """GSM8K train row 5 (624 pages): a rewrite that states 624 after nonsense working passes the
    final-answer check but not the strict one; a faithful rewrite passes both."""
    row = _gsm8k_rows(shared_data, "train")[4]
    assert row["answer"].endswith("#### 624")
    strict, plain = get_checker("math_strict"), get_checker("math")
    nonsense = (
        "James writes a 3-page letter to 2 different friends, so 3 + 2 = 5 pages, twice a week. "
        "A year has 52 weeks, so he writes 624 pages a year.\n#### 624"
    )
    assert plain.check(nonsense, row["answer"]) is None
    assert strict.check(nonsense, row["answer"]) == "missing_intermediate"
    faithful = (
        "Each letter round is 3 pages for each of 2 friends: 3 x 2 = 6 pages. He does that twice a "
        "week, so 6 x 2 = 12.0 pages per week. Over 52 weeks that is 12 x 52 = 624 pages.\n#### 624"
    )
    assert strict.check(faithful, row["answer"]) is None
    # the final answer still comes first, and the general rules still apply
    assert strict.check(faithful.replace("624", "625"), row["answer"]) == "answer_mismatch"
    assert (
        strict.check("Per the reference answer: 6, 12, 624.\n#### 624", row["answer"]) == "mentions_reference"
    )


def test_math_strict_normalises_numbers_and_ignores_unannotated_references(shared_data):
    josh = _gsm8k_rows(shared_data, "test")[2]  # 130,000 / 120,000 / 200,000 / 70,000
    rewrite = (
        "Costs: $80000 + $50000 = $130000.00. The value rises by 80,000 * 1.5 = 120000, so it is "
        "worth 200,000 and the profit is $70,000.\n#### 70000"
    )
    assert get_checker("math_strict").check(rewrite, josh["answer"]) is None
    no_value = rewrite.replace("so it is worth 200,000 and ", "")
    assert get_checker("math_strict").check(no_value, josh["answer"]) == "missing_intermediate"
    # no <<...>> annotations (e.g. OpenMathInstruct): the math rules alone
    assert get_checker("math_strict").check("So 6 * 7 = 42.", "#### 42") is None


def test_math_strict_accepts_every_gsm8k_test_solution_without_its_annotations(shared_data):
    strict = get_checker("math_strict")
    for i, row in enumerate(_gsm8k_rows(shared_data, "test")):
        stripped = re.sub(r"<<[^<>]*>>", "", row["answer"])
        assert strict.check(stripped, row["answer"]) is None, (i, stripped)


_values = st.integers(min_value=1, max_value=10**7)


def _write(value: int, style: int) -> str:
    return [f"{value}", f"{value:,}", f"{value}.0", f"${value:,}.00", f"{value} dollars"][style]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_values, min_size=1, max_size=5, unique=True),
    st.lists(st.integers(0, 4), min_size=5, max_size=5),
)
def test_math_strict_property(values, styles):
    reference = " ".join(f"<<{v}*1={v}>>{v}" for v in values) + f"\n#### {values[-1]}"
    written = " then ".join(_write(v, s) for v, s in zip(values, styles))
    assert numbers_in(written) >= {str(v) for v in values}
    strict = get_checker("math_strict")
    assert calculator_results(reference) == [str(v) for v in values]
    assert strict.check(f"{written}.\n#### {values[-1]}", reference) is None
    if len(values) > 1:  # leave out the first intermediate value: rejected
        rest = " then ".join(_write(v, s) for v, s in zip(values[1:], styles))
        assert strict.check(f"{rest}.\n#### {values[-1]}", reference) == "missing_intermediate"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_math_strict_never_raises(rewrite, reference):
    assert get_checker("math_strict").check(rewrite, reference) in {
        None,
        "empty",
        "mentions_reference",
        "mentions_prompt",
        "no_answer",
        "multiple_answers",
        "no_reference_answer",
        "answer_mismatch",
        "missing_intermediate",
    }
    assert all(isinstance(n, str) for n in numbers_in(rewrite))

"""SDFT templates through the real default tokenizer, and the general/math answer checkers."""

from __future__ import annotations

import pytest

from sdd_plugin.distill.stage import render_prompt
from sdd_plugin.plugins import available, get_checker, get_template


def test_builtins_are_registered():
    assert {"general", "math"} <= set(available("template"))
    assert {"general", "math"} <= set(available("checker"))
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

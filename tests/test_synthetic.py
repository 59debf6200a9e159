"""The embedded synthetic word problems: deterministic, verifiable, disjoint splits, GSM8K-parseable."""

from __future__ import annotations

import json
import re

import pytest

from sdd_plugin.data.synthetic import TEMPLATES, multiple_choice, word_problems, write_jsonl

GSM8K_FINAL = re.compile(r"####\s*(-?[\d,]+)\s*$")
CALC = re.compile(r"<<([^=>]+)=([^>]+)>>")


def _expected(template: str, p: dict) -> int:
    """Re-derive the answer from the generator's parameters, independently of its solution text."""
    if template == "shopping":
        return p["bill"] - p["count"] * p["price"]
    if template == "ages":
        return p["age"] * p["factor"] + p["years"]
    if template == "rates":
        return p["rate"] * (p["hours"] - p["pause"])
    if template == "sharing":
        return p["total"] // p["friends"] - p["eaten"]
    if template == "multi_step":
        v = p["start"]
        for op, k in p["ops"]:
            assert op != "/" or v % k == 0, "division must stay integral"
            v = {"+": v + k, "-": v - k, "*": v * k, "/": v // k}[op]
            assert v >= 0
        return v
    raise AssertionError(template)


def test_deterministic_and_seed_dependent():
    assert word_problems(20, seed=3) == word_problems(20, seed=3)
    assert word_problems(20, seed=3) != word_problems(20, seed=4)
    assert multiple_choice(10, seed=1) == multiple_choice(10, seed=1)
    # a prefix property: asking for more rows does not change the first ones
    assert word_problems(30, seed=3)[:20] == word_problems(20, seed=3)


def test_answers_verifiable_and_parseable():
    rows = word_problems(300, seed=0, with_params=True)
    assert {r["template"] for r in rows} == set(TEMPLATES)
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        m = GSM8K_FINAL.search(r["answer"])
        assert m, r["answer"]
        final = int(m.group(1).replace(",", ""))
        assert final == _expected(r["template"], r["params"]), r
        assert final >= 0
        # every calculator annotation is arithmetically right and the last one is the answer
        calcs = CALC.findall(r["answer"])
        assert len(calcs) >= 2
        for expr, value in calcs:
            assert eval(expr, {"__builtins__": {}}) == int(value), expr  # noqa: S307 - digits and + - * /
        assert int(calcs[-1][1]) == final
        # the numbers the question states are the parameters
        for key in (
            "count",
            "price",
            "bill",
            "age",
            "years",
            "rate",
            "hours",
            "pause",
            "total",
            "eaten",
            "start",
        ):
            if key in r["params"]:
                assert re.search(rf"\b{r['params'][key]}\b", r["question"]), (key, r["question"])


def test_train_test_disjoint():
    train = {r["question"] for r in word_problems(1500, seed=0, split="train")}
    for seed in (0, 1):
        test = {r["question"] for r in word_problems(200, seed=seed, split="test")}
        assert len(test) == 200
        assert not train & test


def test_multiple_choice():
    rows = multiple_choice(100, seed=0)
    labels = set()
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert all(c.isdigit() for c in r["choices"])
        labels.add(r["label"])
    assert labels == {0, 1, 2, 3}
    # the labelled choice is the GSM8K answer of the same problem
    wp = {
        r["question"]: int(GSM8K_FINAL.search(r["answer"]).group(1)) for r in word_problems(100, split="test")
    }
    for r in rows:
        assert int(r["choices"][r["label"]]) == wp[r["question"]]


def test_bad_input():
    with pytest.raises(ValueError, match="split"):
        word_problems(3, split="validation")
    with pytest.raises(ValueError, match="n must be"):
        word_problems(-1)


def test_write_jsonl_and_cli(tmp_path):
    from sdd_plugin.cli import main

    path = write_jsonl(word_problems(5), tmp_path / "a.jsonl")
    assert [json.loads(x) for x in path.read_text().splitlines()] == word_problems(5)
    out = tmp_path / "wp.jsonl"
    assert main(["data", "wordproblems", "--n", "7", "--split", "test", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == word_problems(7, split="test")
    assert main(["data", "multichoice", "--n", "4", "--out", str(tmp_path / "mc.jsonl")]) == 0
    assert main(["data", "wordproblems", "--n", "0", "--out", str(out)]) == 2

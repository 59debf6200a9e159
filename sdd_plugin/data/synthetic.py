"""Embedded default data: generated grade-school word problems with checkable integer answers.

A fresh machine without any dataset still has something to distil, fine-tune and evaluate on.
Problems come from a handful of templates (shopping, ages, rates, sharing, multi-step chains of
2-4 operations) with varied names and objects; each answer is a worked, step-by-step solution in
GSM8K style (``a * b = <<a*b=c>>c`` calculator annotations) ending in ``#### N``.

Splits are disjoint by construction: every question text hashes into a bucket, and ``test`` only
keeps questions of the test bucket while ``train`` keeps all others. So no test question can ever
appear in a train set, whatever ``n`` and ``seed`` are.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SPLITS = ("train", "test")
#: one in ``_TEST_BUCKETS`` question texts belongs to the test split
_TEST_BUCKETS = 8

NAMES = [
    ("Ava", "she"), ("Liam", "he"), ("Maya", "she"), ("Noah", "he"), ("Zara", "she"),
    ("Omar", "he"), ("Lena", "she"), ("Ravi", "he"), ("Chloe", "she"), ("Mateo", "he"),
    ("Priya", "she"), ("Jonas", "he"), ("Emma", "she"), ("Kofi", "he"), ("Sofia", "she"),
    ("Hiro", "he"), ("Amara", "she"), ("Lucas", "he"), ("Nina", "she"), ("Diego", "he"),
    ("Ines", "she"), ("Tariq", "he"), ("Freya", "she"), ("Marco", "he"),
]  # fmt: skip
ITEMS = [
    ("notebook", "notebooks"), ("apple", "apples"), ("pencil", "pencils"), ("ticket", "tickets"),
    ("sticker", "stickers"), ("muffin", "muffins"), ("comic book", "comic books"),
    ("plant pot", "plant pots"), ("candle", "candles"), ("toy car", "toy cars"),
    ("bag of rice", "bags of rice"), ("pair of socks", "pairs of socks"),
]  # fmt: skip
THINGS = ["marbles", "stamps", "cookies", "seashells", "beads", "cards", "coins", "stickers", "grapes"]
MACHINES = [
    ("bakery oven", "loaves"), ("printer", "pages"), ("factory robot", "toys"),
    ("juice press", "bottles"), ("sewing machine", "shirts"), ("candle mould", "candles"),
]  # fmt: skip
RELATIVES = ["brother", "sister", "cousin", "aunt", "uncle", "neighbour"]


def _calc(a: int | str, op: str, b: int | str, value: int) -> str:
    """``a op b = <<a op b=value>>value`` (GSM8K calculator annotation)."""
    expr = f"{a}{op}{b}"
    return f"{a} {op} {b} = <<{expr}={value}>>{value}"


def _count(k: int, plural: str) -> str:
    """``1 bead`` / ``3 beads`` (every noun in ``THINGS`` takes a plain -s plural)."""
    return f"{k} {plural[:-1] if k == 1 else plural}"


def _pick_name(rng: random.Random, exclude: str | None = None) -> tuple[str, str]:
    while True:
        name = rng.choice(NAMES)
        if name[0] != exclude:
            return name


def _shopping(rng: random.Random) -> dict[str, Any]:
    (name, pron) = _pick_name(rng)
    singular, plural = rng.choice(ITEMS)
    count, price = rng.randint(2, 9), rng.randint(2, 15)
    cost = count * price
    bill = next(b for b in (10, 20, 50, 100, 200) if b > cost)
    change = bill - cost
    question = (
        f"{name} buys {count} {plural} that cost ${price} each. {pron.capitalize()} pays with a "
        f"${bill} bill. How much change, in dollars, does {pron} get back?"
    )
    steps = [
        f"The {plural} cost {_calc(count, '*', price, cost)} dollars.",
        f"The change is {_calc(bill, '-', cost, change)} dollars.",
    ]
    params = {"count": count, "price": price, "bill": bill}
    return dict(
        question=question,
        steps=steps,
        value=change,
        params=params,
        wrong=[cost, bill - price, change + price],
    )


def _ages(rng: random.Random) -> dict[str, Any]:
    (name, _pron) = _pick_name(rng)
    relative = rng.choice(RELATIVES)
    age, factor, years = rng.randint(3, 15), rng.randint(2, 4), rng.randint(2, 12)
    now = age * factor
    later = now + years
    question = (
        f"{name} is {age} years old. {name}'s {relative} is {factor} times as old as {name}. "
        f"How old will {name}'s {relative} be in {years} years?"
    )
    steps = [
        f"The {relative} is {_calc(age, '*', factor, now)} years old now.",
        f"In {years} years the {relative} will be {_calc(now, '+', years, later)} years old.",
    ]
    params = {"age": age, "factor": factor, "years": years}
    return dict(
        question=question, steps=steps, value=later, params=params, wrong=[now, age + years, later + years]
    )


def _rates(rng: random.Random) -> dict[str, Any]:
    machine, products = rng.choice(MACHINES)
    rate, hours = rng.randint(3, 30), rng.randint(4, 12)
    pause = rng.randint(1, hours - 2)
    working = hours - pause
    made = rate * working
    question = (
        f"A {machine} makes {rate} {products} per hour. It is switched on for {hours} hours, but it "
        f"stands still for {pause} of those hours. How many {products} does it make?"
    )
    steps = [
        f"It works for {_calc(hours, '-', pause, working)} hours.",
        f"It makes {_calc(rate, '*', working, made)} {products}.",
    ]
    params = {"rate": rate, "hours": hours, "pause": pause}
    return dict(
        question=question,
        steps=steps,
        value=made,
        params=params,
        wrong=[rate * hours, made + rate, made - rate],
    )


def _sharing(rng: random.Random) -> dict[str, Any]:
    (name, pron) = _pick_name(rng)
    things = rng.choice(THINGS)
    friends, each = rng.randint(2, 8), rng.randint(4, 20)
    total = friends * each
    eaten = rng.randint(2, each - 1)
    left = each - eaten
    question = (
        f"{name} has {total} {things} and shares them equally among {friends} friends. "
        f"Each friend then gives away {eaten} {things}. How many {things} does each friend have left?"
    )
    steps = [
        f"Each friend gets {_calc(total, '/', friends, each)} {things}.",
        f"Each friend has {_calc(each, '-', eaten, left)} {things} left.",
    ]
    params = {"total": total, "friends": friends, "eaten": eaten}
    return dict(
        question=question, steps=steps, value=left, params=params, wrong=[each, total - eaten, left + 1]
    )


def _chain(rng: random.Random) -> dict[str, Any]:
    """Multi-step: a starting amount, then 2-4 operations (+, -, *, /) kept to integers >= 0."""
    (name, pron) = _pick_name(rng)
    things = rng.choice(THINGS)
    start = value = rng.randint(5, 40)
    n_ops = rng.randint(2, 4)
    sentences = [f"{name} has {value} {things}."]
    steps: list[str] = []
    ops: list[list[Any]] = []
    wrong = [value]
    for _ in range(n_ops):
        choices = (
            ["+", "*"]
            + (["-"] if value >= 2 else [])
            + (["/"] if any(value % d == 0 for d in (2, 3, 4)) else [])
        )
        op = rng.choice(choices)
        if op == "+":
            k = rng.randint(2, 25)
            new = value + k
            sentences.append(f"{pron.capitalize()} gets {k} more {things}.")
            steps.append(f"After getting {k} more, {pron} has {_calc(value, '+', k, new)} {things}.")
        elif op == "-":
            k = rng.randint(1, value - 1)
            new = value - k
            sentences.append(f"{pron.capitalize()} gives {_count(k, things)} to a friend.")
            steps.append(f"After giving {k} away, {pron} has {_calc(value, '-', k, new)} {things}.")
        elif op == "*":
            k = rng.choice([2, 3])
            new = value * k
            word = {2: "doubles", 3: "triples"}[k]
            sentences.append(f"Then {pron} {word} the number of {things} {pron} has.")
            steps.append(f"After that {pron} has {_calc(value, '*', k, new)} {things}.")
        else:
            k = rng.choice([d for d in (2, 3, 4) if value % d == 0])
            new = value // k
            sentences.append(f"{pron.capitalize()} keeps 1 of {k} equal piles and gives the rest away.")
            steps.append(f"One pile holds {_calc(value, '/', k, new)} {things}.")
        ops.append([op, k])
        value = new
        wrong.append(value)
    question = " ".join(sentences) + f" How many {things} does {name} have now?"
    params = {"start": start, "ops": ops}
    return dict(question=question, steps=steps, value=value, params=params, wrong=wrong[:-1] + [value + 2])


#: template name -> generator(rng) -> dict(question, steps, value, params, wrong)
TEMPLATES: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "shopping": _shopping,
    "ages": _ages,
    "rates": _rates,
    "sharing": _sharing,
    "multi_step": _chain,
}


def _bucket(question: str) -> str:
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return "test" if digest[0] % _TEST_BUCKETS == 0 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _generate(n: int, seed: int, split: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    _check_split(split)
    rng = random.Random(f"sdd-synthetic/{seed}/{split}")
    names = list(TEMPLATES)
    seen: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * (n + 10):  # the template space is large; this only guards against bugs
            raise RuntimeError(f"could not generate {n} distinct {split} problems")
        template = names[len(out) % len(names)] if rng.random() < 0.5 else rng.choice(names)
        problem = TEMPLATES[template](rng)
        q = problem["question"]
        if q in seen or _bucket(q) != split:
            continue
        seen.add(q)
        out.append((template, problem))
    return out


def word_problems(n: int, seed: int = 0, split: str = "train", with_params: bool = False) -> list[dict]:
    """``n`` deterministic word problems in GSM8K schema (``question``, ``answer`` ending ``#### N``).

    ``train`` and ``test`` never share a question. ``with_params=True`` adds ``template`` and
    ``params`` (the numbers the problem was built from) so answers can be re-derived.
    """
    rows = []
    for template, p in _generate(n, seed, split):
        row: dict[str, Any] = {
            "question": p["question"],
            "answer": "\n".join(p["steps"]) + f"\n#### {p['value']}",
        }
        if with_params:
            row["template"] = template
            row["params"] = p["params"]
        rows.append(row)
    return rows


def multiple_choice(n: int, seed: int = 0, split: str = "test") -> list[dict]:
    """``n`` word problems as 4-way multiple choice (``question``, ``choices`` [4 str], ``label``).

    Wrong choices are plausible slips (an intermediate result, a skipped step, off by one step).
    """
    rng = random.Random(f"sdd-synthetic-mc/{seed}/{split}")
    rows = []
    for _template, p in _generate(n, seed, split):
        correct = int(p["value"])
        wrong: list[int] = []
        for w in list(p["wrong"]) + [correct + d for d in (1, -1, 2, 10, -2, 5)]:
            if w >= 0 and w != correct and w not in wrong:
                wrong.append(int(w))
            if len(wrong) == 3:
                break
        choices = [correct] + wrong
        rng.shuffle(choices)
        rows.append(
            {"question": p["question"], "choices": [str(c) for c in choices], "label": choices.index(correct)}
        )
    return rows


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` as JSON lines to ``path`` atomically; returns the path."""
    from ..cache import write_text_atomic

    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_text_atomic(path, text)
    return path

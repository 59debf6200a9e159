"""Dataset formats: round trips, loaders for every file type, clear errors on bad rows."""

from __future__ import annotations

import gzip
import json

import pytest

from sdd_plugin.distill.formats import (
    FORMATS,
    detect_format,
    format_for_axolotl_type,
    get_format,
    load_rows,
    read_examples,
)

ROWS = {
    "alpaca": {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "id": 7},
    "dolly": {
        "instruction": "Summarise.",
        "context": "A long text.",
        "response": "Short.",
        "category": "summarization",
    },
    "messages": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    "sharegpt": {
        "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}],
        "source": "x",
    },
    "gsm8k": {"question": "Half of 48?", "answer": "48/2 = <<48/2=24>>24\n#### 24"},
    "openmath": {"question": "1+1?", "generated_solution": "We get $\\boxed{2}$.", "expected_answer": "2"},
}
RESPONSE_FIELD = {
    "alpaca": "output",
    "dolly": "response",
    "gsm8k": "answer",
    "openmath": "generated_solution",
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_round_trip_keeps_schema(name):
    spec = get_format(name)
    row = ROWS[name]
    before = json.dumps(row, sort_keys=True)
    ex = spec.example(row)
    assert ex.instruction and ex.reference and ex.messages[-1]["role"] == "user"
    new = spec.with_response(row, "NEW")
    assert json.dumps(row, sort_keys=True) == before  # input not mutated
    assert set(new) == set(row)
    assert spec.example(new).reference == "NEW"  # the response field was replaced
    changed = [k for k in row if new[k] != row[k]]
    assert changed == [spec.response_field]
    if name in RESPONSE_FIELD:
        assert new[RESPONSE_FIELD[name]] == "NEW"
    assert detect_format(row) == name


def test_chat_context_and_last_assistant_turn():
    ex = get_format("messages").example(ROWS["messages"])
    assert ex.reference == "Paris."
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user"]
    assert "Capital of France?" in ex.instruction and "Be brief." in ex.instruction
    new = get_format("messages").with_response(ROWS["messages"], "Paris, of course.")
    assert new["messages"][2]["content"] == "Hello!" and new["messages"][4]["content"] == "Paris, of course."


def test_gsm8k_strips_calculator_annotations_for_the_teacher_only():
    ex = get_format("gsm8k").example(ROWS["gsm8k"])
    assert ex.prompt_reference == "48/2 = 24\n#### 24"
    assert ex.reference == ROWS["gsm8k"]["answer"]
    assert ex.expected == "24"
    assert get_format("gsm8k").finalize("So it is 24.", ex) == "So it is 24.\n#### 24"
    assert get_format("gsm8k").finalize("x\n#### 24", ex) == "x\n#### 24"


def test_alpaca_input_is_shown_with_the_instruction():
    ex = get_format("alpaca").example(ROWS["alpaca"])
    assert ex.instruction == "Add the numbers.\n\n2 and 3"
    ex2 = get_format("alpaca").example({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert ex2.instruction == "Say hi."


def test_loads_every_file_type(tmp_path):
    import datasets

    rows = [ROWS["alpaca"] | {"id": i} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "a.csv"))
    for name in ("a.jsonl", "a.json", "a.jsonl.gz", "a.parquet", "a.csv"):
        got = load_rows(tmp_path / name, "alpaca", limit=3)
        assert [r["id"] for r in got] == [0, 1, 2], name
        assert str(got[0]["output"]) == "5"  # csv reads it back as a number
    assert load_rows(rows, "alpaca", limit=2) == rows[:2]


def test_bad_row_names_file_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = ROWS["gsm8k"]
    path.write_text("\n".join(json.dumps(r) for r in [good, good, {"question": "q", "solution": "s"}]) + "\n")
    with pytest.raises(ValueError) as err:
        load_rows(path, "gsm8k")
    msg = str(err.value)
    assert "bad.jsonl" in msg and "row 3" in msg and "answer" in msg  # rows counted from 1


def test_bad_chat_rows():
    with pytest.raises(ValueError, match=r"row 2: .*no assistant turn"):
        read_examples([ROWS["messages"], {"messages": [{"role": "user", "content": "hi"}]}], "messages", "x")
    with pytest.raises(ValueError, match=r"row 1: .*messages\[0\]\.content"):
        read_examples([{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}], "messages")


def test_unknown_format_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_format("jsonish")
    assert "jsonish" in str(err.value) and "alpaca" in str(err.value) and "gsm8k" in str(err.value)


def test_missing_file_and_axolotl_types(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "nope.jsonl", "alpaca")
    assert format_for_axolotl_type("alpaca") == "alpaca"
    assert format_for_axolotl_type("chat_template") == "messages"
    with pytest.raises(ValueError, match="completion"):
        format_for_axolotl_type("completion")


def test_generated_gsm8k_rows_lose_calculator_notes_and_keep_the_final_answer():
    """The checks of ``test_real_data`` on generated GSM8K-style rows (no data folder needed)."""
    from sdd_plugin.data.synthetic import word_problems

    rows = load_rows(word_problems(20, seed=0), "gsm8k")
    for row, ex in zip(rows, read_examples(rows, "gsm8k")):
        final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert "<<" in row["answer"] and "<<" not in ex.prompt_reference
        assert ex.expected == final and ex.prompt_reference.endswith(f"#### {final}")


def test_real_data(shared_data):
    gsm = load_rows(shared_data / "gsm8k" / "train.jsonl", "gsm8k", limit=5)
    assert all(ex.expected for ex in read_examples(gsm, "gsm8k"))
    assert "<<" not in read_examples(gsm, "gsm8k")[0].prompt_reference
    alpaca = load_rows(shared_data / "alpaca" / "alpaca_5000.json", "alpaca", limit=5)
    assert set(alpaca[0]) == {"instruction", "input", "output"}
    dolly = load_rows(
        shared_data / "dolly" / "databricks-dolly-15k.citations-stripped.jsonl.gz", "dolly", limit=5
    )
    assert read_examples(dolly, "dolly")[0].reference == dolly[0]["response"]

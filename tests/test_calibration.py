"""Calibration text loading: built-in corpus, txt/json/jsonl/parquet/csv files, errors."""

from __future__ import annotations

import gzip
import json

import pytest

from sdd_plugin.prune.calibration import builtin_texts, calibration_identity, load_calibration_texts


def test_builtin_corpus_is_deterministic_and_varied():
    a, b = builtin_texts(64), builtin_texts(64)
    assert a == b and len(a) == 64
    assert len(set(a)) == 64 and all(len(t) > 80 for t in a)
    assert load_calibration_texts(None, limit=10) == a[:10]
    assert load_calibration_texts("builtin", limit=300)[:64] == builtin_texts(300)[:64]
    assert len(load_calibration_texts(None, limit=300)) == 300


def test_txt_paragraphs_and_headings(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(
        " = Heading = \n\nFirst paragraph, line one is long enough\ncontinues on line two.\n\n"
        " = = Sub = = \n\nSecond paragraph is here and is long enough too.\n\nshort\n"
    )
    texts = load_calibration_texts(str(f), limit=None, min_chars=20)
    assert texts == [
        "First paragraph, line one is long enough continues on line two.",
        "Second paragraph is here and is long enough too.",
    ]
    lines = tmp_path / "lines.txt"
    lines.write_text("one document on a single line here\nanother document on its own line\n")
    assert len(load_calibration_texts(str(lines), min_chars=10)) == 2
    assert load_calibration_texts(str(f), limit=1, min_chars=20) == texts[:1]


def test_jsonl_json_parquet_csv_fields(tmp_path):
    import datasets

    rows = [{"text": f"document number {i} with enough characters in it", "id": i} for i in range(5)]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_calibration_texts(str(jl), limit=3) == [r["text"] for r in rows[:3]]

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps([{"instruction": "Say hi politely.", "input": "", "output": "Hello there, friend!"}])
    )
    assert load_calibration_texts(str(alpaca), min_chars=5) == ["Say hi politely.\n\nHello there, friend!"]

    qa = tmp_path / "qa.jsonl.gz"
    with gzip.open(qa, "wt") as fh:
        fh.write(json.dumps({"question": "What is two plus two?", "answer": "Two plus two is four."}) + "\n")
    assert load_calibration_texts(str(qa), min_chars=5) == ["What is two plus two?\n\nTwo plus two is four."]

    pq = tmp_path / "b.parquet"
    datasets.Dataset.from_list([{"body": "a parquet row with enough text", "other": "x" * 40}]).to_parquet(
        str(pq)
    )
    assert load_calibration_texts(str(pq), min_chars=5) == ["a parquet row with enough text"]
    assert load_calibration_texts(str(pq), text_field="other", min_chars=5) == ["x" * 40]
    with pytest.raises(ValueError, match="text_field 'nope'.*columns"):
        load_calibration_texts(str(pq), text_field="nope")

    csv = tmp_path / "c.csv"
    csv.write_text("content,label\nthe csv row has enough text here,1\n")
    assert load_calibration_texts(str(csv), min_chars=5) == ["the csv row has enough text here"]


def test_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        load_calibration_texts(str(tmp_path / "nothere.jsonl"))
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        load_calibration_texts("./nothere.txt")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: the file is empty"):
        load_calibration_texts(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    with pytest.raises(ValueError, match="blank.txt.*no usable text"):
        load_calibration_texts(str(blank))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"a": 1, "b": 2}) + "\n")
    with pytest.raises(ValueError, match="nofield.jsonl: row 1.*text_field"):
        load_calibration_texts(str(nofield))
    odd = tmp_path / "data.xyz"
    odd.write_text("hello")
    with pytest.raises(ValueError, match="unsupported format"):
        load_calibration_texts(str(odd))
    with pytest.raises(ValueError, match="limit"):
        load_calibration_texts(None, limit=0)


def test_hub_id_that_is_not_available_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no-such-user/no-such-dataset"):
        load_calibration_texts("no-such-user/no-such-dataset")


def test_identity_changes_with_content(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("some calibration text that is long enough")
    first = calibration_identity(str(f))
    f.write_text("other calibration text that is long enough")
    assert calibration_identity(str(f)) != first
    assert calibration_identity(None) == calibration_identity("builtin")
    assert calibration_identity("org/ds") == {"hub": "org/ds", "text_field": None}


def test_real_wikitext_and_dolly(shared_data):
    wiki = load_calibration_texts(str(shared_data / "wikitext2" / "wiki.test.raw"), limit=20)
    assert len(wiki) == 20 and all(len(t) >= 32 and not t.startswith("=") for t in wiki)
    dolly = load_calibration_texts(
        str(shared_data / "dolly" / "databricks-dolly-15k.citations-stripped.jsonl.gz"), limit=5
    )
    assert len(dolly) == 5 and all("\n\n" in t for t in dolly)
    alpaca = load_calibration_texts(str(shared_data / "alpaca" / "alpaca_5000.json"), limit=5)
    assert len(alpaca) == 5

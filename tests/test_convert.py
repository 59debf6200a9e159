"""`sdd data convert` and sdd_plugin.distill.convert: any dataset format -> a layout axolotl reads."""

from __future__ import annotations

import gzip
import json

import pytest

from sdd_plugin.cli import main
from sdd_plugin.distill.convert import convert_rows, layout_for_axolotl_type

GSM8K = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7",
    },
    {
        "question": "A box holds 6 eggs. How many eggs are in 2 boxes?",
        "answer": "2 boxes hold 2 * 6 = <<2*6=12>>12 eggs.\n#### 12",
    },
    {"question": "What is 10 - 4?", "answer": "10 - 4 = <<10-4=6>>6\n#### 6"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SDD_CACHE_DIR", str(root))
    return root


def test_sdd_data_convert_writes_chat_rows(tmp_path, capsys):
    source = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    out = tmp_path / "chat.jsonl"
    assert (
        main(["data", "convert", "--source", str(source), "--format", "gsm8k", "--out", str(out), "--n", "2"])
        == 0
    )
    assert "wrote 2 messages rows" in capsys.readouterr().out
    assert _read_jsonl(out) == [
        {
            "messages": [
                {"role": "user", "content": GSM8K[0]["question"]},
                {"role": "assistant", "content": "He has 3 + 4 = 7 apples.\n#### 7"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": GSM8K[1]["question"]},
                {"role": "assistant", "content": "2 boxes hold 2 * 6 = 12 eggs.\n#### 12"},
            ]
        },
    ]


def test_sdd_data_convert_alpaca_layout_from_a_gzipped_dolly_file(tmp_path):
    dolly = [
        {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
        {
            "instruction": "Summarise.",
            "context": "Cats sleep a lot.",
            "response": "Cats sleep.",
            "category": "sum",
        },
    ]
    source = tmp_path / "dolly.jsonl.gz"
    with gzip.open(source, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in dolly)
    out = tmp_path / "alpaca.jsonl"
    argv = [
        "data",
        "convert",
        "--source",
        str(source),
        "--format",
        "dolly",
        "--layout",
        "alpaca",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert _read_jsonl(out) == [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Summarise.\n\nCats sleep a lot.", "input": "", "output": "Cats sleep."},
    ]


def test_sdd_data_convert_errors_name_the_problem(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "data",
                "convert",
                "--source",
                str(tmp_path / "none.jsonl"),
                "--format",
                "gsm8k",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "none.jsonl does not exist" in capsys.readouterr().err
    bad = _write_jsonl(tmp_path / "bad.jsonl", GSM8K[:1] + [{"question": "q", "solution": "s"}])
    assert main(["data", "convert", "--source", str(bad), "--format", "gsm8k", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: row 2" in err and "answer" in err
    assert main(["data", "convert", "--source", str(bad), "--format", "poetry", "--out", str(out)]) == 2
    assert "unknown dataset format 'poetry'" in capsys.readouterr().err
    assert not out.exists()  # nothing written on bad input


def test_the_sdd_convert_data_path_is_the_same_conversion(tmp_path, cache):
    from sdd_plugin.axolotl.recipe import resolve_data_uri

    source = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    out = tmp_path / "cli.jsonl"
    assert main(["data", "convert", "--source", str(source), "--format", "gsm8k", "--out", str(out)]) == 0
    uri = resolve_data_uri(f"sdd://convert?source={source}&format=gsm8k", "chat_template")
    assert str(uri).startswith(str(cache)) and uri.read_text() == out.read_text()
    alpaca = resolve_data_uri(f"sdd://convert?source={source}&format=gsm8k", "alpaca")
    assert _read_jsonl(alpaca) == convert_rows(GSM8K, "gsm8k", "alpaca")


def test_layouts_and_axolotl_types():
    assert layout_for_axolotl_type("chat_template") == "messages"
    assert layout_for_axolotl_type("alpaca_chat") == "alpaca"
    assert layout_for_axolotl_type("completion") is None and layout_for_axolotl_type(None) is None
    with pytest.raises(ValueError, match="layout must be one of messages, alpaca"):
        convert_rows(GSM8K, "gsm8k", "gsm8k")
    chat = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        }
    ]
    assert convert_rows(chat, "messages") == chat  # chat rows keep their context turns

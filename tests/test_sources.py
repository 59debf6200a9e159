"""sdd_plugin.data.sources: local file (by extension) / folder / hub id -> how to load it."""

from __future__ import annotations

import json

import pytest

from sdd_plugin.data.sources import data_extension, file_builder, load_source, looks_local, resolve_source


def test_extensions_and_builders():
    assert data_extension("a/b/train.jsonl.gz") == ".jsonl" and file_builder("train.jsonl.gz") == "json"
    assert file_builder("x.parquet") == "parquet" and file_builder("x.tsv") == "csv"
    assert file_builder("notes.txt") is None and data_extension("README") == ""


@pytest.mark.parametrize(
    "source,local",
    [
        ("openai/gsm8k", False),
        ("wikitext", False),
        ("wikitext:wikitext-2-raw-v1", False),
        ("./data", True),
        ("/abs/x", True),
        ("~/x", True),
        ("data/train.jsonl", True),
        ("train.jsonl.gz", True),
        ("notes.xyz", True),
    ],
)
def test_looks_local(source, local):
    assert looks_local(source) is local


def test_resolve_and_load(tmp_path):
    rows = [{"a": i, "b": str(i)} for i in range(5)]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = resolve_source(f)
    assert (src.kind, src.builder) == ("file", "json")
    assert load_source(f, limit=3).to_list() == rows[:3]
    assert resolve_source(tmp_path).kind == "folder"
    hub = resolve_source("org/name:cfg")
    assert (hub.kind, hub.location, hub.config, str(hub)) == ("hub", "org/name", "cfg", "org/name:cfg")
    assert resolve_source("org/name", config="main").config == "main"
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        resolve_source(tmp_path / "missing.jsonl")
    odd = tmp_path / "rows.xyz"
    odd.write_text("x")
    with pytest.raises(ValueError, match="rows.xyz: unsupported data file type '.xyz'"):
        load_source(odd)

"""Slow: self-distill real GSM8K rows with the embedded default model and check the real output."""

from __future__ import annotations

import json

import pytest

from sdd_plugin.distill.answers import answers_equal, extract_final_answers, reference_answer
from sdd_plugin.distill.stage import distill_dataset
from sdd_plugin.interfaces import GenerationSettings

N_ROWS = 16


@pytest.mark.slow
def test_distill_gsm8k_with_the_default_model(tmp_path, shared_data, default_model):
    data = shared_data / "gsm8k" / "train.jsonl"
    res = distill_dataset(
        teacher="smollm2-135m-instruct",
        data=data,
        format="gsm8k",
        out=tmp_path / "out",
        limit=N_ROWS,
        settings=GenerationSettings(max_new_tokens=160, batch_size=16),
        cache_dir=tmp_path / "cache",
        measure_nll=False,  # covered on a tiny model (test_distill.py); halves this test's time
    )
    report = res.report
    assert report["rows"] == N_ROWS and report["template"] == "math" and report["checker"] == "math"
    assert report["accepted"] + sum(report["fallbacks"].values()) == N_ROWS
    assert report["acceptance_rate"] == pytest.approx(report["accepted"] / N_ROWS, abs=1e-4)
    assert report["accepted"] >= 1, report["fallbacks"]

    originals = [json.loads(line) for line in data.read_text().splitlines()[:N_ROWS]]
    out = [json.loads(line) for line in res.output_path.read_text().splitlines()]
    side = [json.loads(line) for line in res.rows_path.read_text().splitlines()]
    assert len(out) == len(side) == N_ROWS
    for orig, row, info in zip(originals, out, side):
        assert set(row) == {"question", "answer"} and row["question"] == orig["question"]
        if info["accepted"]:
            # every accepted rewrite states exactly the reference's final answer, in GSM8K style
            stated = set(extract_final_answers(row["answer"]))
            assert len(stated) == 1
            assert answers_equal(stated.pop(), reference_answer(orig["answer"]))
            assert "#### " in row["answer"] and row["answer"] != orig["answer"]
        else:
            assert row["answer"] == orig["answer"] and info["reason"]

"""distill_dataset on tiny random models (engine, cache reuse, fallback, report, NLL meter, CLI)."""

from __future__ import annotations

import json
import math
import random

import pytest

from sdd_plugin.distill.stage import distill_dataset, response_nll
from sdd_plugin.generation.hf.backend import plan_batches
from sdd_plugin.interfaces import GenerationSettings

ROWS = [
    {
        "instruction": f"Write a short note about topic {i}." + " Be specific." * (i % 4),
        "input": "",
        "output": f"Note {i}.",
        "id": i,
    }
    for i in range(6)
]


def test_distill_tiny_model_end_to_end_and_cache_reuse(tmp_path, tiny_models):
    teacher = tiny_models("llama", 2)
    # a tiny random model repeats "\n" when greedy: sample (seeded per batch) for visible text
    settings = GenerationSettings(max_new_tokens=6, batch_size=4, do_sample=True, temperature=1.0, top_p=1.0)
    kw = dict(
        teacher=teacher,
        data=ROWS,
        format="alpaca",
        settings=settings,
        cache_dir=tmp_path / "c",
        show_progress=False,
    )
    res = distill_dataset(out=tmp_path / "a", allow_truncated=True, **kw)
    out = [json.loads(line) for line in res.output_path.read_text().splitlines()]
    assert len(out) == len(ROWS)
    for before, after in zip(ROWS, out):
        assert set(after) == set(before)  # the input's schema, nothing added
        assert {k: v for k, v in after.items() if k != "output"} == {
            k: v for k, v in before.items() if k != "output"
        }
    side = [json.loads(line) for line in res.rows_path.read_text().splitlines()]
    assert [s["index"] for s in side] == list(range(len(ROWS)))
    assert all(1 <= s["num_tokens"] <= 6 for s in side)
    r = res.report
    assert r["rows"] == 6 and r["generated_rows"] == 6 and r["cached_rows"] == 0
    assert r["accepted"] + sum(r["fallbacks"].values()) == 6
    assert r["template"] == "general" and r["checker"] == "general"
    # speed: the tokens of the rows it generated over the seconds it spent (rounded to 0.01 s)
    assert r["generated_tokens"] == sum(s["num_tokens"] for s in side)
    assert r["tokens_per_s"] * r["generation_seconds"] == pytest.approx(
        r["generated_tokens"], abs=0.006 * r["tokens_per_s"] + 0.01
    )
    # the NLL meter reports nats per token: a random model is near-uniform over its vocabulary
    uniform = math.log(json.loads((teacher / "config.json").read_text())["vocab_size"])
    assert r["nll_original"] == pytest.approx(uniform, abs=0.25)
    assert r["nll_distilled"] == pytest.approx(uniform, abs=0.25)
    assert json.loads(res.report_path.read_text())["rows"] == 6
    assert (tmp_path / "a" / "distill_report.md").read_text().startswith("# Self-data distillation report")
    accepted = [o["output"] for o, s in zip(out, side) if s["accepted"]]
    assert accepted and all(a not in {row["output"] for row in ROWS} for a in accepted)

    # a finished run is reused at once, with identical output
    again = distill_dataset(out=tmp_path / "b", allow_truncated=True, **kw)
    assert again.report["this_invocation"]["generated_rows"] == 0 and again.report["cached_rows"] == 6
    assert again.report["generated_rows"] == 6  # the report counts the whole run
    assert again.report["tokens_per_s"] == r["tokens_per_s"]
    assert again.output_path.read_text() == res.output_path.read_text()

    # the same generations, now rejected as truncated: every row falls back to the original
    strict = distill_dataset(out=tmp_path / "strict.jsonl", measure_nll=False, **kw)
    assert strict.report["this_invocation"]["generated_rows"] == 0
    assert strict.report["fallbacks"] == {"truncated": 6} and strict.report["accepted"] == 0
    assert [json.loads(line) for line in strict.output_path.read_text().splitlines()] == ROWS
    assert strict.report_path == tmp_path / "distill_report.json"


def test_bad_input_fails_before_the_model_loads(tmp_path):
    bad = ROWS[:2] + [{"instruction": "x"}]
    with pytest.raises(ValueError, match=r"row 3: .*output"):  # rows counted from 1
        distill_dataset(teacher="/no/such/model", data=bad, format="alpaca", out=tmp_path)
    with pytest.raises(ValueError, match="known formats"):
        distill_dataset(teacher="/no/such/model", data=ROWS, format="csvish", out=tmp_path)
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        distill_dataset(teacher="/no/such/model", data=ROWS, format="alpaca", template="nope", out=tmp_path)


def test_plan_batches_is_stable_for_whole_batch_subsets():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 20) for _ in range(rng.randint(1, 40))]
        bs = rng.randint(1, 6)
        batches = plan_batches(lengths, bs)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(lengths[b[0]] >= lengths[b[-1]] for b in batches)
        keep = [b for b in batches if rng.random() < 0.5]
        todo = [i for b in keep for i in b]
        replanned = plan_batches([lengths[i] for i in todo], bs)
        assert [[todo[j] for j in b] for b in replanned] == keep


def test_response_nll_matches_unbatched_loss(tiny_models):
    import torch

    from sdd_plugin.models import load_model

    model, tok = load_model(tiny_models("llama", 2))
    prompts = [
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "Question: what is the capital?\nAnswer: ",
    ]
    responses = ["Hello there, friend.", "Paris"]
    mean, per_row = response_nll(model, tok, prompts, responses, batch_size=2)
    for (nll, n), p, r in zip(per_row, prompts, responses):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        labels = ids.clone()
        labels[0, : len(p_ids)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        assert n == len(r_ids)
        assert nll / n == pytest.approx(loss, rel=1e-4)
    assert mean == pytest.approx(sum(s for s, _ in per_row) / sum(n for _, n in per_row))


def test_cli_distill(tmp_path, tiny_models, capsys):
    from sdd_plugin.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    args = ["distill", "--teacher", str(tiny_models("llama", 2)), "--data", str(data), "--format", "alpaca"]
    args += [
        "--out",
        str(tmp_path / "o"),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        "--no-nll",
        "--no-progress",
    ]
    args += ["--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    assert '"rows": 3' in capsys.readouterr().out
    assert len((tmp_path / "o" / "distilled.jsonl").read_text().splitlines()) == 3
    assert main(args[:5] + ["--format", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "known formats" in capsys.readouterr().err


def test_sampled_retries_replace_rejected_rows_and_resume(tmp_path, tiny_models):
    """Greedy rewrites of a tiny random model are blank ("\\n" repeated): rejected. Sampled retries
    re-generate only those rows, keep the first that passes, and are cached like the first pass."""
    teacher = tiny_models("llama", 2)
    settings = GenerationSettings(max_new_tokens=6, batch_size=4, temperature=1.0, top_p=1.0)
    kw = dict(
        teacher=teacher,
        data=ROWS,
        format="alpaca",
        settings=settings,
        cache_dir=tmp_path / "c",
        show_progress=False,
        allow_truncated=True,
        measure_nll=False,
    )
    greedy = distill_dataset(out=tmp_path / "g", **kw)
    rejected = sum(greedy.report["fallbacks"].values())
    assert rejected > 0, greedy.report

    retried = distill_dataset(out=tmp_path / "r", retries=2, **kw)
    r = retried.report
    assert r["retries"] == 2 and r["cached_rows"] == len(ROWS)  # the greedy pass is reused
    assert r["this_invocation"]["generated_rows"] >= rejected  # only rejected rows are generated again
    assert r["generated_rows"] == len(ROWS) + r["this_invocation"]["generated_rows"]
    assert r["accepted"] > greedy.report["accepted"] and r["accepted_on_retry"] > 0
    assert r["accepted"] == greedy.report["accepted"] + r["accepted_on_retry"]
    side = [json.loads(line) for line in retried.rows_path.read_text().splitlines()]
    first = [json.loads(line) for line in greedy.rows_path.read_text().splitlines()]
    for s, f in zip(side, first):
        if f["accepted"]:
            assert s["accepted"] and s["attempt"] == 0
        elif s["accepted"]:
            assert s["attempt"] in (1, 2) and s["reason"] is None
        else:
            assert s["attempt"] is None and s["reason"] == f["reason"]

    # acceptance per try: try 0 is the greedy pass; each later try re-samples what is still rejected
    tries = r["acceptance_by_try"]
    assert tries[0] == {
        "try": 0,
        "rows": len(ROWS),
        "accepted": greedy.report["accepted"],
        "rejected": greedy.report["fallbacks"],
    }
    assert [t["try"] for t in tries] == list(range(len(tries))) and 2 <= len(tries) <= 3
    for prev, cur in zip(tries, tries[1:]):
        assert cur["rows"] == prev["rows"] - prev["accepted"]
    for t in tries:
        assert t["accepted"] + sum(t["rejected"].values()) == t["rows"]
        assert t["accepted"] == sum(1 for s in side if s["accepted"] and s["attempt"] == t["try"])
    assert r["fell_back"] == len(ROWS) - r["accepted"] == tries[-1]["rows"] - tries[-1]["accepted"]
    assert greedy.report["acceptance_by_try"] == tries[:1]
    assert "## Acceptance per try" in (tmp_path / "r" / "distill_report.md").read_text()

    again = distill_dataset(out=tmp_path / "r2", retries=2, **kw)
    assert again.report["this_invocation"]["generated_rows"] == 0
    assert again.report["generated_rows"] == r["generated_rows"]
    assert again.output_path.read_text() == retried.output_path.read_text()
    assert again.report["acceptance_by_try"] == tries  # resumed from the row caches: the same counts
    with pytest.raises(ValueError, match="retries"):
        distill_dataset(out=tmp_path / "x", retries=-1, **kw)

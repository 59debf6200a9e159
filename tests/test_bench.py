"""The recovery benchmark's plumbing: presets, resumable stages, the recipe it trains with, its report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sdd_plugin import bench
from sdd_plugin.bench.recovery import write_results
from sdd_plugin.bench.stages import PENDING_FILE, STAGE_FILE
from sdd_plugin.bench.trainer import packaged_recipe
from sdd_plugin.report import build_report

REPO = Path(__file__).resolve().parents[1]


def test_presets_validate_and_reject_unknown_settings():
    from sdd_plugin.bench.presets import PRESETS
    from sdd_plugin.distill.formats import get_format
    from sdd_plugin.plugins import available

    for name in PRESETS:
        preset = bench.get_preset(name)
        assert preset.name == name  # a preset derived from another one renames itself
        for ts in preset.train_sets:  # the recipe uses the template's name for the checker too
            get_format(ts.format)
            assert ts.template in available("template") and ts.template in available("checker"), ts
    assert bench.get_preset("quick", eval_limit=7).eval_limit == 7
    with pytest.raises(ValueError, match="eval_limt"):
        bench.get_preset("quick", eval_limt=7)
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        bench.get_preset("fast")


def test_stages_run_once_per_inputs_and_resume_after_a_failure(tmp_path):
    stages = bench.Stages(tmp_path, echo=lambda _: None)
    calls = []

    def work(folder):
        calls.append(folder.name)
        (folder / "out.txt").write_text("x")
        return {"n": len(calls)}

    assert stages.run("a", {"k": 1}, work)["summary"] == {"n": 1}
    assert stages.run("a", {"k": 1}, work)["cached"] is True
    assert len(calls) == 1
    # a changed setting recomputes only that stage
    assert stages.run("a", {"k": 2}, work)["summary"] == {"n": 2}

    def boom(folder):
        (folder / "partial.txt").write_text("half")
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        stages.run("b", {"k": 1}, boom)
    assert not (stages.folder("b") / STAGE_FILE).exists()  # unfinished: not taken as done
    # same inputs: the unfinished folder is kept for the stage to resume from (training checkpoints)
    seen = []
    meta = bench.Stages(tmp_path, echo=lambda _: None).run(
        "b", {"k": 1}, lambda folder: seen.append((folder / "partial.txt").read_text()) or {}
    )
    assert meta["cached"] is False and seen == ["half"]
    assert not (stages.folder("b") / PENDING_FILE).exists()
    # changed inputs: an unfinished folder of the old inputs is wiped
    with pytest.raises(RuntimeError):
        stages.run("c", {"k": 1}, boom)
    meta = bench.Stages(tmp_path, echo=lambda _: None).run("c", {"k": 2}, work)
    assert meta["cached"] is False and not (stages.folder("c") / "partial.txt").exists()


def test_sft_and_sdd_recipes_differ_only_in_the_distill_switch(tmp_path):
    from sdd_plugin.axolotl.args import parse_sdd_args

    preset = bench.get_preset("demo")
    ts = preset.train_sets[0]
    data = tmp_path / "d.jsonl"
    sft = bench.recipe_for(preset, ts, data, tmp_path / "o", distill=False, calibration="/x/cal.txt")
    sdd = bench.recipe_for(preset, ts, data, tmp_path / "o", distill=True, calibration="/x/cal.txt")
    assert {k for k in sft if sft[k] != sdd.get(k)} == {"sdd_distill"}
    args = parse_sdd_args(sdd)  # a valid recipe for the plugin
    assert args.sdd_distill and args.sdd_prune_calibration == "/x/cal.txt"
    assert sdd["bf16"] is False and sdd["sample_packing"] is False
    assert sdd["datasets"] == [{"path": str(data), "type": "chat_template"}]

    # checkpoints for resuming a stopped training stage; the demo trains in fp32
    assert sdd["save_strategy"] == "steps" and sdd["save_total_limit"] == 1
    assert sdd["auto_resume_from_checkpoints"] is True
    assert parse_sdd_args(sdd).sdd_distill_dtype == "float32"

    # sampled retries reach the plugin (and so its distilled-data hash)
    full = bench.get_preset("full", dtype="bfloat16", distill_retries=2)
    full_sdd = bench.recipe_for(
        full, full.train_sets[0], data, tmp_path / "o", distill=True, calibration=None
    )
    full_args = parse_sdd_args(full_sdd)
    assert full_args.sdd_distill_retries == 2
    # ... and so does its bf16: training autocast and the teacher's dtype
    assert full_sdd["bf16"] is True
    assert full_args.sdd_distill_dtype == "bfloat16"
    from sdd_plugin.axolotl.recipe import distilled_path

    entry = {"path": str(data)}
    no_retries = full_args.model_copy(update={"sdd_distill_retries": 0})
    assert distilled_path(entry, "m", "messages", full_args) != distilled_path(
        entry, "m", "messages", no_retries
    )
    fp32 = full_args.model_copy(update={"sdd_distill_dtype": "float32"})
    assert distilled_path(entry, "m", "messages", full_args) != distilled_path(entry, "m", "messages", fp32)


def test_training_rows_are_chat_messages_with_cleaned_originals():
    ts = bench.TrainSet(name="w", source="synthetic", format="gsm8k", template="math", rows=5)
    rows = bench.training_rows(ts, None)
    assert len(rows) == 5
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert "<<" not in assistant["content"] and "####" in assistant["content"]


def _res(label, value, bpb):
    return {
        "model": label,
        "tasks": {
            "sdd_synth_mc": {"metric": "acc", "value": value, "n": 10, "shots": 0, "chance": 0.25},
            "sdd_synth_ppl": {
                "metric": "bits_per_byte",
                "value": bpb,
                "n": 10,
                "shots": 0,
                "chance": None,
                "higher_is_better": False,
            },
        },
    }


def _results(preset: dict) -> dict:
    """A benchmark's results as ``run_recovery`` hands them to the report stage."""
    return {
        "preset": preset,
        "evals": {
            "baseline": _res("baseline", 0.65, 1.0),
            "pruned": _res("pruned", 0.45, 1.7),
            "sft-wordproblems": _res("sft", 0.50, 1.3),
            "sdd-wordproblems": _res("sdd", 0.55, 1.2),
        },
        "prune": {"removed_blocks": [13, 14], "num_layers_before": 30, "num_layers_after": 28},
        "distill": {
            "wordproblems": {
                "rows": 4,
                "acceptance_rate": 0.5,
                "fallbacks": {"truncated": 2},
                "tokens_per_s": None,
            }
        },
        "specdec": {},
        "stages": {"prune": {"seconds": 1.0, "cached": False}},
        "wall_seconds": 2.0,
    }


def test_report_states_the_sdd_minus_sft_gap(tmp_path):
    write_results(_results(bench.get_preset("demo").model_dump()), tmp_path)
    path = build_report(tmp_path)
    assert path == tmp_path / "REPORT.md"
    text = path.read_text()
    # distillation served from the row cache (a new run folder, a warm cache): no speed, no crash
    assert "| wordproblems | 4 | 50.0 |" in text and "– (rows cached)" in text
    # above-chance recovery: SFT (0.50-0.25)/(0.65-0.25)=62.5%, SDD 75.0% -> +12.5 points
    assert "SDD − SFT above-chance recovery = +12.5 points" in text
    assert "meets" in text
    assert "wordproblems 48 rows; 1 epoch(s), max 6 steps; LoRA r 16" in text
    assert "dtype float32 for generation, training and eval" in text
    assert "Machine (where the report was written): " in text and " cores, " in text
    assert "sanity check, not evidence" in text  # the demo preset says so
    png = (tmp_path / "recovery.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "results.json").is_file()


def test_per_task_limits_must_name_evaluated_tasks():
    with pytest.raises(ValueError, match="eval_task_limits names task"):
        bench.get_preset("demo", eval_task_limits={"sdd_mmlu": 2})


def test_sdd_report_rewrites_the_benchmark_page_unchanged(tmp_path):
    """``sdd report`` over a benchmark's run folder renders the page the benchmark wrote, from
    ``results.json`` alone, with the chart link still valid when the page is written elsewhere."""
    from sdd_plugin.cli import main

    preset = bench.get_preset("quick").model_dump()
    evals = {
        "baseline": _res("baseline", 0.65, 1.0),
        "pruned": _res("pruned", 0.45, 1.7),
        "sft-gsm8k": _res("sft", 0.50, 1.3),
        "sdd-gsm8k": _res("sdd", 0.55, 1.2),
        "sft-dolly": _res("sft", 0.45, 1.4),
        "sdd-dolly": _res("sdd", 0.40, 1.5),
        "merged-sdd": _res("merged", 0.5, 1.3),
    }
    results = dict(_results(preset), evals=evals)
    results["specdec"] = {"sft-gsm8k": {"acceptance_rate": 0.6, "tokens_per_step": 2.1, "speedup": 1.3}}
    results["distill"]["dolly"] = {"rows": 4, "acceptance_rate": 1.0, "tokens_per_s": 12.5, "fallbacks": {}}
    returned = write_results(results, tmp_path)
    assert set(json.loads((tmp_path / "results.json").read_text())["gaps"]) == {"gsm8k", "dolly"}
    assert returned["recovery"]["models"] and returned is results
    first = build_report(tmp_path).read_text()
    assert "- **dolly**: SDD − SFT above-chance recovery = -12.5 points" in first
    assert "## Speculative decoding" in first and "| sft-gsm8k | 60.0 | 2.10 | 1.30× |" in first
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").read_text() == first
    # written elsewhere: the same page but for the chart link, rebased onto the run folder
    other = build_report(tmp_path, out=tmp_path / "docs" / "run.md")
    relinked = other.read_text()
    assert "![recovery](../recovery.png)" in relinked and (other.parent / "../recovery.png").is_file()
    assert relinked.replace("../recovery.png", "recovery.png") == first
    # a results.json that is not a benchmark's leaves the generic report
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "results.json").write_text(json.dumps({"model": "x"}))
    assert build_report(plain).read_text().startswith("# SDD run report: plain")


@pytest.mark.slow
def test_demo_report_is_what_sdd_report_writes(tmp_path):
    """``sdd report`` after ``sdd demo`` gives the same REPORT.md, and a rerun is all cached."""
    from sdd_plugin.cli import main

    run_dir = tmp_path / "demo"
    results = bench.run_recovery("demo", run_dir, echo=lambda _: None)
    written = (run_dir / "REPORT.md").read_text()
    assert "# Recovery benchmark — preset `demo`" in written and (run_dir / "recovery.png").is_file()
    assert results["evals"]["pruned"]["tasks"]["sdd_synth_ppl"]["value"] is not None
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "REPORT.md").read_text() == written
    shutil.rmtree(run_dir / "stages" / "eval-pruned")  # recomputed; every other stage is cached
    again = bench.run_recovery("demo", run_dir, echo=lambda _: None)
    cached = {name for name, s in again["stages"].items() if s["cached"]}
    assert set(again["stages"]) - cached == {"eval-pruned"}
    value = again["evals"]["pruned"]["tasks"]["sdd_synth_ppl"]["value"]
    assert value == results["evals"]["pruned"]["tasks"]["sdd_synth_ppl"]["value"]


def test_packaged_recipe_has_the_training_settings_of_the_user_facing_one():
    """The benchmark trains from package data (an installed wheel has no recipes/ folder); its
    settings must not drift from recipes/smollm2-135m-sdd-gsm8k-cpu.yml."""
    user = yaml.safe_load((REPO / "recipes" / "smollm2-135m-sdd-gsm8k-cpu.yml").read_text(encoding="utf-8"))
    packaged = packaged_recipe()
    assert list(packaged) == list(user)  # same keys, same order (the written recipe.yml keeps it)
    run_keys = {"datasets", "dataset_prepared_path", "output_dir"}  # set per run by recipe_for
    assert {k for k in user if user[k] != packaged[k]} <= run_keys
    preset = bench.get_preset("demo")
    recipe = bench.recipe_for(preset, preset.train_sets[0], Path("d.jsonl"), Path("o"), distill=True)
    assert all(recipe[k] for k in run_keys)
    packaged["lora_dropout"] = 0.5  # a fresh dict per call
    assert packaged_recipe()["lora_dropout"] == user["lora_dropout"]

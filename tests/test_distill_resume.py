"""A distillation killed with SIGKILL halfway resumes to exactly the output of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdd_plugin.distill.stage import distill_dataset
from sdd_plugin.interfaces import GenerationSettings

N_ROWS = 24


def _command(teacher: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from sdd_plugin.cli import main; sys.exit(main())",
        "distill",
        "--teacher", str(teacher),
        "--data", str(data),
        "--format", "alpaca",
        "--out", str(out),
        "--batch-size", "2",
        "--max-new-tokens", "24",
        "--sample", "--temperature", "1.0", "--top-p", "1.0",
        "--allow-truncated",
        "--no-nll",
    ]  # fmt: skip


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, SDD_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cache_lines(cache: Path) -> int:
    files = list(cache.glob("distill/*/rows.jsonl"))
    return sum(f.read_text(errors="replace").count("\n") for f in files)


def _read(out: Path) -> tuple[list[dict], list[dict], dict]:
    rows = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    side = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return rows, side, json.loads((out / "distill_report.json").read_text())


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_models):
    teacher = tiny_models("llama", 4)
    data = tmp_path / "data.jsonl"
    rows = [
        {
            "instruction": f"Explain item {i}." + " Add detail." * (i % 5),
            "input": "",
            "output": f"Item {i}.",
            "id": i,
        }
        for i in range(N_ROWS)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # 1. start a run and SIGKILL it once some, but not all, rows are in its cache
    killed_cache = tmp_path / "cache-killed"
    proc = subprocess.Popen(
        _command(teacher, data, tmp_path / "out-killed"),
        env=_env(killed_cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _cache_lines(killed_cache) < 4:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _cache_lines(killed_cache)
    assert 4 <= done_before < N_ROWS
    assert not (tmp_path / "out-killed" / "distilled.jsonl").exists()

    # 2. rerun the same command: it resumes
    resumed = subprocess.run(
        _command(teacher, data, tmp_path / "out-killed"),
        env=_env(killed_cache),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    # 3. an uninterrupted run of the same job in a fresh cache (in-process: same code, same settings)
    settings = GenerationSettings(max_new_tokens=24, batch_size=2, do_sample=True, temperature=1.0, top_p=1.0)
    distill_dataset(
        teacher=teacher,
        data=str(data),
        format="alpaca",
        out=tmp_path / "out-clean",
        settings=settings,
        cache_dir=tmp_path / "cache-clean",
        measure_nll=False,
        show_progress=False,
        allow_truncated=True,
    )

    rows_k, side_k, report_k = _read(tmp_path / "out-killed")
    rows_c, side_c, report_c = _read(tmp_path / "out-clean")
    assert report_k["cached_rows"] > 0 and report_k["this_invocation"]["generated_rows"] < N_ROWS
    # the report counts the whole run: the rows generated before the kill too, and their time
    assert report_k["generated_rows"] == N_ROWS and report_k["tokens_per_s"] > 0
    assert report_k["generated_tokens"] == sum(s["num_tokens"] for s in side_k)
    assert report_c["cached_rows"] == 0 and report_c["generated_rows"] == N_ROWS
    assert [r["id"] for r in rows_k] == list(range(N_ROWS))  # no row lost or duplicated
    assert [s["index"] for s in side_k] == list(range(N_ROWS))
    assert rows_k == rows_c and side_k == side_c
    assert (tmp_path / "out-killed" / "distilled.jsonl").read_bytes() == (
        tmp_path / "out-clean" / "distilled.jsonl"
    ).read_bytes()
    assert sum(r["output"] != o["output"] for r, o in zip(rows_k, rows)) > N_ROWS // 2  # real rewrites

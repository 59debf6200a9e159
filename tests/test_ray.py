"""Teacher regeneration on a real local Ray cluster (2 workers x 1 CPU, the ``hf`` backend on the
default model): the rows equal a single-process run's, each lands in the cache once, and a Ray
worker killed with SIGKILL mid-run loses nothing: the run (or its rerun) ends with the clean output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sdd_plugin.distill.stage import distill_dataset
from sdd_plugin.generation.ray_runner import RayBackend
from sdd_plugin.generation.selection import make_backend
from sdd_plugin.interfaces import GenerationSettings

N_ROWS = 8
MAX_NEW_TOKENS = 24


def _write_data(path: Path) -> Path:
    rows = [
        {
            "instruction": f"Give one tip about topic {i}." + " Be brief." * (i % 3),
            "input": "",
            "output": f"Tip {i}.",
        }
        for i in range(N_ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _settings() -> GenerationSettings:
    return GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=1)


def _distill(teacher, data: Path, out: Path, cache: Path, **kwargs):
    return distill_dataset(
        teacher=teacher,
        data=str(data),
        format="alpaca",
        out=out,
        settings=_settings(),
        cache_dir=cache,
        measure_nll=False,
        show_progress=False,
        allow_truncated=True,
        **kwargs,
    )


def _cache_records(cache: Path) -> list[dict]:
    return [
        json.loads(line) for f in cache.glob("distill/*/rows.jsonl") for line in f.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, default_model):
    """The single-process ``hf`` run of the job: (data file, distilled rows)."""
    root = tmp_path_factory.mktemp("ray-clean")
    data = _write_data(root / "data.jsonl")
    result = _distill(default_model, data, root / "out", root / "cache", backend="hf")
    return data, result.rows


@pytest.fixture
def local_ray():
    """Shuts down the Ray instance a test started."""
    import ray

    yield
    ray.shutdown()


def test_bad_ray_settings_fail_before_ray_starts():
    import ray

    with pytest.raises(ValueError, match="ray_workers needs ray"):
        make_backend("hf", ray=False, ray_workers=2)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        make_backend("nope", ray=True)
    with pytest.raises(ValueError, match="ray workers must be an integer >= 1"):
        RayBackend("hf", workers=0)
    assert not ray.is_initialized()


@pytest.mark.slow
def test_ray_rows_equal_the_single_process_run(tmp_path, default_model, clean, local_ray):
    import ray

    data, clean_rows = clean
    assert not ray.is_initialized()
    result = _distill(
        default_model, data, tmp_path / "out", tmp_path / "cache", backend="auto", ray=True, ray_workers=2
    )
    assert ray.is_initialized()  # no address: a local Ray instance started
    assert result.report["backend"] == "hf"  # auto on a cluster without GPUs
    assert result.report["generated_rows"] == N_ROWS
    assert result.rows == clean_rows
    keys = [r["key"] for r in _cache_records(tmp_path / "cache")]
    assert len(keys) == len(set(keys)) == N_ROWS  # every row in the cache exactly once


def _read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]


def _batch_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "_BatchWorker" in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _run_cli(teacher, data: Path, out: Path, cache: Path, log: Path) -> subprocess.Popen:
    """``sdd distill --ray --ray-workers 2`` in a subprocess (output to ``log``)."""
    command = [
        sys.executable, "-c", "import sys; from sdd_plugin.cli import main; sys.exit(main())",
        "distill", "--teacher", str(teacher), "--data", str(data), "--format", "alpaca", "--out", str(out),
        "--batch-size", "1", "--max-new-tokens", str(MAX_NEW_TOKENS), "--allow-truncated", "--no-nll",
        "--no-progress", "--ray", "--ray-workers", "2",
    ]  # fmt: skip
    env = dict(os.environ, SDD_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as f:
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_killed_ray_worker_loses_and_duplicates_no_row(tmp_path, default_model, clean):
    data, clean_rows = clean
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = _run_cli(default_model, data, out, cache, tmp_path / "first.log")
    killed = None
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and killed is None:
            workers = _batch_workers()
            if 1 <= len(_cache_records(cache)) < N_ROWS - 2 and workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        assert killed is not None, "the run ended before a worker could be killed"
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_run_ok = proc.returncode == 0
    if first_run_ok:  # Ray restarted the killed actor and re-ran its batch
        assert _read_rows(out) == clean_rows
    # the rerun resumes from what the first run finished (all of it, when Ray recovered the worker)
    rerun = _run_cli(default_model, data, tmp_path / "out-rerun", cache, tmp_path / "rerun.log")
    assert rerun.wait(timeout=900) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert _read_rows(tmp_path / "out-rerun") == clean_rows
    report = json.loads((tmp_path / "out-rerun" / "distill_report.json").read_text())
    keys = [r["key"] for r in _cache_records(cache)]
    assert len(keys) == len(set(keys)) == N_ROWS  # no row lost, none written twice
    if first_run_ok:  # nothing was left to do
        assert report["cached_rows"] == N_ROWS


@pytest.mark.slow
def test_ray_carries_top_logprobs_unchanged(tiny_models, local_ray):
    """Top-k log-probs (KD) through 2 Ray workers on a tiny model: the single-process hf results."""
    from sdd_plugin.generation.hf.backend import HFBackend

    path = str(tiny_models("llama"))
    prompts = [f"Question {i}: what comes next?" + " More words." * i for i in range(6)]
    settings = GenerationSettings(max_new_tokens=8, batch_size=2, extra={"logprobs_top_k": 3})
    single, spread = [], []
    HFBackend().generate(path, prompts, settings, single.append, show_progress=False)
    RayBackend("hf", workers=2).generate(path, prompts, settings, spread.append, show_progress=False)
    single.sort(key=lambda r: r.index)
    spread.sort(key=lambda r: r.index)
    assert [r.index for r in spread] == list(range(len(prompts)))
    for a, b in zip(spread, single):
        assert (a.text, a.num_tokens, a.finished) == (b.text, b.num_tokens, b.finished)
        assert a.logprobs is not None and b.logprobs is not None
        assert a.logprobs.token_ids == b.logprobs.token_ids and a.logprobs.top_ids == b.logprobs.top_ids
        assert len(a.logprobs.top_ids) == a.num_tokens and all(len(ids) == 3 for ids in a.logprobs.top_ids)
        diff = max(
            abs(x - y) for u, v in zip(a.logprobs.top_logprobs, b.logprobs.top_logprobs) for x, y in zip(u, v)
        )
        assert diff < 1e-5

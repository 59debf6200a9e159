"""The ``vllm`` backend on the default model (real vLLM, CPU build, eager mode): greedy rows, the
truncated flag, stop ids, per-row seeded sampling, and a SIGKILLed run that resumes to exactly
the output of an uninterrupted one. Engine settings and the ``auto`` choice are checked without
starting vLLM."""

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
from sdd_plugin.generation.selection import resolve_backend_name
from sdd_plugin.generation.vllm_backend import CPU_KV_CACHE_GIB, VLLM_BACKEND, engine_kwargs, row_seed
from sdd_plugin.interfaces import GenerationSettings
from sdd_plugin.plugins import available

N_ROWS = 6
MAX_NEW_TOKENS = 32
#: a small KV cache and no torch.compile: the engine starts quickly on a small CPU machine
ENGINE = {"enforce_eager": True, "dtype": "float32", "kv_cache_gib": 0.5}


def test_registered_and_auto_is_hf_without_cuda():
    import torch

    assert {"hf", "vllm"} <= set(available("backend"))
    assert resolve_backend_name("vllm") == "vllm"
    assert resolve_backend_name("auto") == ("vllm" if torch.cuda.is_available() else "hf")


def test_engine_settings():
    kwargs = engine_kwargs("/m", GenerationSettings(seed=3))
    assert kwargs["model"] == kwargs["tokenizer"] == "/m" and kwargs["seed"] == 3
    assert kwargs["tensor_parallel_size"] == 1 and kwargs["enforce_eager"] is False
    assert kwargs["dtype"] == "float32"  # no CUDA here
    assert kwargs["kv_cache_memory_bytes"] == int(CPU_KV_CACHE_GIB * (1 << 30))
    extra = {"tensor_parallel_size": 2, "dtype": "bfloat16", "vllm_args": {"max_num_seqs": 8}}
    kwargs = engine_kwargs("/m", GenerationSettings(extra=extra))
    assert (kwargs["tensor_parallel_size"], kwargs["dtype"], kwargs["max_num_seqs"]) == (2, "bfloat16", 8)
    kwargs = engine_kwargs("/m", GenerationSettings(extra={"gpu_memory_utilization": 0.3}))
    assert kwargs["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in kwargs
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        engine_kwargs("/m", GenerationSettings(extra={"tensor_parallel_size": 0}))
    with pytest.raises(ValueError, match="kv_cache_gib"):
        engine_kwargs("/m", GenerationSettings(extra={"kv_cache_gib": -1}))
    # a row's sampling seed depends on the run seed and its prompt only
    assert row_seed(0, "a") == row_seed(0, "a") != row_seed(1, "a") != row_seed(0, "b")


def _write_data(path: Path) -> Path:
    rows = [
        {"instruction": f"Name {i + 2} fruits." + " Explain why." * (i % 3), "input": "", "output": f"{i}."}
        for i in range(N_ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _distill(teacher, data: Path, out: Path, cache: Path, **settings):
    settings = GenerationSettings(
        **{"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 2, "extra": ENGINE, **settings}
    )
    return distill_dataset(
        teacher=teacher,
        data=str(data),
        format="alpaca",
        out=out,
        settings=settings,
        backend="vllm",
        cache_dir=cache,
        measure_nll=False,
        show_progress=False,
        allow_truncated=True,
    )


def _cache_records(cache: Path) -> list[dict]:
    return [
        json.loads(line) for f in cache.glob("distill/*/rows.jsonl") for line in f.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, default_model):
    """An uninterrupted greedy run: (data file, its output folder, its cache)."""
    root = tmp_path_factory.mktemp("vllm-clean")
    data = _write_data(root / "data.jsonl")
    _distill(default_model, data, root / "out", root / "cache")
    yield data, root / "out", root / "cache"
    VLLM_BACKEND.close()


@pytest.mark.slow
def test_greedy_rows_truncated_flag_and_stop_ids(clean, default_model):
    _, out, cache = clean
    report = json.loads((out / "distill_report.json").read_text())
    assert report["backend"] == "vllm" and report["generated_rows"] == N_ROWS
    records = _cache_records(cache)
    assert len(records) == N_ROWS and all(r["text"] for r in records)
    for r in records:  # cut off exactly at max_new_tokens, or ended by a stop id before it
        assert r["num_tokens"] == MAX_NEW_TOKENS if not r["finished"] else r["num_tokens"] <= MAX_NEW_TOKENS
    assert any(not r["finished"] for r in records) and any(r["finished"] for r in records)
    # greedy: the same job again in a fresh cache gives the same bytes
    data = out.parent / "data.jsonl"
    _distill(default_model, data, out.parent / "again", out.parent / "cache-again")
    assert (out.parent / "again" / "distilled.jsonl").read_bytes() == (out / "distilled.jsonl").read_bytes()


@pytest.mark.slow
def test_sampling_is_seeded_per_row(clean, default_model, tmp_path):
    data = clean[0]
    texts = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        _distill(default_model, data, tmp_path / name, tmp_path / f"cache-{name}", do_sample=True, seed=seed)
        texts[name] = (tmp_path / name / "distilled.jsonl").read_text()
    assert texts["a"] == texts["b"]  # same seed: the same samples (a fresh cache each time)
    assert texts["a"] != texts["c"]  # another seed, other samples


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(clean, default_model, tmp_path):
    data, clean_out, _ = clean
    cache, out = tmp_path / "cache", tmp_path / "out"
    script = (
        "import json, sys\n"
        "from sdd_plugin.distill.stage import distill_dataset\n"
        "from sdd_plugin.interfaces import GenerationSettings\n"
        "if __name__ == '__main__':\n"
        f"    s = GenerationSettings(max_new_tokens={MAX_NEW_TOKENS}, batch_size=1, extra={ENGINE!r})\n"
        f"    distill_dataset(teacher={str(default_model)!r}, data={str(data)!r}, format='alpaca',\n"
        f"        out={str(out)!r}, settings=s, backend='vllm', cache_dir={str(cache)!r},\n"
        "        measure_nll=False, show_progress=False, allow_truncated=True)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    family: set[int] = set()
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and len(_cache_records(cache)) < 2:
            family |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in family:  # the engine's own processes, should they outlive their parent
            try:
                psutil.Process(pid).wait(timeout=30)
            except psutil.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
    done_before = len(_cache_records(cache))
    assert 2 <= done_before < N_ROWS
    # resume in this process (its engine is already up); batch_size=1 as in the killed run
    result = distill_dataset(
        teacher=default_model,
        data=str(data),
        format="alpaca",
        out=out,
        settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=1, extra=ENGINE),
        backend="vllm",
        cache_dir=cache,
        measure_nll=False,
        show_progress=False,
        allow_truncated=True,
    )
    assert result.report["cached_rows"] == done_before  # only the rest was generated
    keys = [r["key"] for r in _cache_records(cache)]
    assert len(keys) == len(set(keys)) == N_ROWS
    # an uninterrupted batch_size=1 run in a fresh cache: the same bytes
    clean_one = _distill(default_model, data, tmp_path / "clean-1", tmp_path / "cache-1", batch_size=1)
    assert (out / "distilled.jsonl").read_bytes() == clean_one.output_path.read_bytes()

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


def test_backend_args_are_checked_before_any_weights_load(tmp_path, capsys, monkeypatch):
    """``sdd distill --backend-arg`` and the recipe key ``sdd_distill_backend_args``: an unknown option
    or a bad value is a clear error naming it (exit 2, nothing loaded, nothing written); a good
    one lands in ``settings.extra``; engine sizes stay out of the cache keys."""
    from sdd_plugin.axolotl.args import RecipeKeyError, parse_sdd_args
    from sdd_plugin.axolotl.recipe import distilled_path, generation_settings_dict
    from sdd_plugin.cli import main
    from sdd_plugin.generation.backend_args import output_settings, pairs_to_dict, parse_backend_args

    monkeypatch.setenv("SDD_CACHE_DIR", str(tmp_path / "cache"))
    data = _write_data(tmp_path / "data.jsonl")
    base = [
        "distill",
        "--teacher",
        "/nowhere",
        "--data",
        str(data),
        "--format",
        "alpaca",
        "--out",
        str(tmp_path / "o"),
    ]
    for args, needle in (
        (
            ["--backend", "vllm", "--backend-arg", "enforce_eagr=true"],
            "enforce_eagr: not an option of the vllm backend; did you mean 'enforce_eager'",
        ),
        (
            ["--backend", "vllm", "--backend-arg", "tensor_parallel_size=0"],
            "tensor_parallel_size: Input should be greater than or equal to 1",
        ),
        (
            ["--backend", "hf", "--backend-arg", "enforce_eager=true"],
            "enforce_eager: not an option of the hf backend",
        ),
        (["--backend", "vllm", "--backend-arg", "dtype=bfloat16"], "dtype: set it with --dtype"),
        (["--backend", "vllm", "--backend-arg", "eager"], "expected KEY=VALUE"),
    ):
        assert main(base + args) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()

    extra = parse_backend_args(
        "vllm", pairs_to_dict(["enforce_eager=true", "kv_cache_gib=0.5", "vllm_args={max_num_seqs: 8}"])
    )
    assert extra == {"enforce_eager": True, "kv_cache_gib": 0.5, "vllm_args": {"max_num_seqs": 8}}
    assert parse_backend_args("auto", {"prompt_lookup": 0, "enforce_eager": True}) == {
        "prompt_lookup": 0,
        "enforce_eager": True,
    }

    with pytest.raises(RecipeKeyError, match="sdd_distill_backend_args: max_model_lenn: not an option"):
        parse_sdd_args({"sdd_distill_backend": "vllm", "sdd_distill_backend_args": {"max_model_lenn": 4096}})
    args = parse_sdd_args(
        {"sdd_distill_backend": "vllm", "sdd_distill_backend_args": {"enforce_eager": True}}
    )
    assert generation_settings_dict(args)["extra"] == {"enforce_eager": True}
    # a smaller KV cache or memory share (after an out-of-memory error) keeps the cache keys
    sized = parse_sdd_args(
        {
            "sdd_distill_backend": "vllm",
            "sdd_distill_backend_args": {"enforce_eager": True, "gpu_memory_utilization": 0.5},
        }
    )
    entry = {"path": str(data), "type": "alpaca"}
    assert distilled_path(entry, "t", "alpaca", sized) == distilled_path(entry, "t", "alpaca", args)
    assert output_settings(generation_settings_dict(sized)) == generation_settings_dict(args)
    eager_off = parse_sdd_args(
        {"sdd_distill_backend": "vllm", "sdd_distill_backend_args": {"enforce_eager": False}}
    )
    assert distilled_path(entry, "t", "alpaca", eager_off) != distilled_path(entry, "t", "alpaca", args)


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


# ------------------------------------------------------------------------ top-k log-probs (KD)


@pytest.fixture(scope="module")
def engine_closed():
    """Stops the vLLM engine (kept per process) after this module's tests."""
    yield
    VLLM_BACKEND.close()


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Name a primary colour.", "Red is a primary colour."),
        ("What is 2 + 3?", "2 + 3 = 5."),
    ]
]


def test_vllm_top_k_maps_ranks_and_drops_the_sampled_token_outside_the_top_k():
    from vllm.logprobs import Logprob

    from sdd_plugin.generation.vllm_backend import token_logprobs, top_of_position

    # vLLM: the sampled token (rank 7 here) first, then the top-k by rank
    position = {9: Logprob(-3.0, 7), 4: Logprob(-0.5, 1), 8: Logprob(-2.0, 3), 5: Logprob(-1.0, 2)}
    assert top_of_position(position, 3) == ([4, 5, 8], [-0.5, -1.0, -2.0])
    sampled_in_top = {5: Logprob(-1.0, 2), 4: Logprob(-0.5, 1)}
    assert top_of_position(sampled_in_top, 2) == ([4, 5], [-0.5, -1.0])
    lp = token_logprobs([9, 5], [position, sampled_in_top, position], 2)
    assert lp.token_ids == [9, 5] and lp.top_ids == [[4, 5], [4, 5]]  # only the counted tokens
    with pytest.raises(RuntimeError, match="1 of 2 tokens"):
        token_logprobs([9, 5], [position], 2)
    kwargs = engine_kwargs("/m", GenerationSettings(extra={"logprobs_top_k": 32}))
    assert kwargs["max_logprobs"] == 32  # above vLLM's default limit of 20
    assert "max_logprobs" not in engine_kwargs("/m", GenerationSettings(extra={"logprobs_top_k": 20}))


@pytest.mark.slow
def test_top_logprobs_agree_with_the_hf_backend(default_model, engine_closed):
    """Greedy, fp32, the default model: at every token both backends generate alike, vLLM's top-k
    ids are hf's and the log-probs agree within 1e-2; the EOS that ends a row is included."""
    from sdd_plugin.distill.templates import render_prompt
    from sdd_plugin.generation.hf.backend import HFBackend
    from sdd_plugin.models import load_tokenizer

    k = 5
    tok = load_tokenizer(default_model)
    prompts = [render_prompt(tok, row["messages"][:1]) for row in CHAT_ROWS]
    results: dict[str, dict] = {"vllm": {}, "hf": {}}
    for name, backend, extra in (("vllm", VLLM_BACKEND, ENGINE), ("hf", HFBackend(), {})):
        settings = GenerationSettings(max_new_tokens=12, batch_size=3, extra={**extra, "logprobs_top_k": k})
        backend.generate(
            str(default_model), prompts, settings, lambda r, got=results[name]: got.__setitem__(r.index, r)
        )
    compared = 0
    for i in range(len(prompts)):
        v, h = results["vllm"][i], results["hf"][i]
        lp = v.logprobs
        assert lp is not None and len(lp.token_ids) == v.num_tokens == len(lp.top_ids) == len(lp.top_logprobs)
        assert all(len(ids) == k for ids in lp.top_ids)
        assert all(a >= b for values in lp.top_logprobs for a, b in zip(values, values[1:]))
        same = next((j for j, (a, b) in enumerate(zip(lp.token_ids, h.logprobs.token_ids)) if a != b), None)
        n = min(len(lp.token_ids), len(h.logprobs.token_ids)) if same is None else same
        assert n >= 4, (i, lp.token_ids, h.logprobs.token_ids)
        for j in range(n):
            assert lp.top_ids[j] == h.logprobs.top_ids[j], (i, j)
            diff = max(abs(a - b) for a, b in zip(lp.top_logprobs[j], h.logprobs.top_logprobs[j]))
            assert diff < 1e-2, (i, j, diff)
            compared += 1
    assert compared >= 12


@pytest.mark.slow
def test_kd_set_from_the_vllm_backend_matches_the_hf_one(tmp_path, default_model, engine_closed):
    """``distill_dataset(kd_top_k=...)`` with ``backend="vllm"`` writes the KD set of the hf
    backend: where both wrote the same rewrite, the same target ids, log-probs within 1e-2."""
    k = 4
    results = {}
    for name, extra in (("vllm", ENGINE), ("hf", {})):
        results[name] = distill_dataset(
            teacher=default_model,
            data=CHAT_ROWS,
            format="messages",
            out=tmp_path / name,
            settings=GenerationSettings(max_new_tokens=12, batch_size=3, extra=extra),
            backend=name,
            cache_dir=tmp_path / "cache",
            measure_nll=False,
            show_progress=False,
            allow_truncated=True,
            kd_top_k=k,
        )
    assert results["vllm"].report["backend"] == "vllm" and results["vllm"].report["kd"]["rows"] == len(
        CHAT_ROWS
    )
    kd = {
        name: [json.loads(line) for line in r.kd_path.read_text().splitlines()] for name, r in results.items()
    }
    same = [(v, h) for v, h in zip(kd["vllm"], kd["hf"]) if v["messages"] == h["messages"]]
    assert len(same) >= 2
    for v, h in same:
        assert v["target_token_ids"] == h["target_token_ids"]
        assert all(len(ids) == k for ids in v["target_token_ids"])
        diff = max(abs(a - b) for x, y in zip(v["logprobs"], h["logprobs"]) for a, b in zip(x, y))
        assert diff < 1e-2

"""Bad input and output paths fail before the work with exit code 2 and a message naming the problem;
outputs appear whole; the console shows stage lines, not library noise (which goes to the log file).

Real tiny models throughout (``tiny_models``); ``SDD_CACHE_DIR`` points into ``tmp_path`` so the
generation caches, locks and log files of these tests are their own.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sdd_plugin.cache import atomic_dir, cache_lock, write_json_atomic, write_text_atomic
from sdd_plugin.cli import main
from sdd_plugin.data.synthetic import word_problems


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SDD_CACHE_DIR", str(root))
    return root


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "wp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in word_problems(4, seed=1)))
    return path


def _distill(teacher, data, out, *extra: str) -> list[str]:
    return [
        "distill",
        "--teacher", str(teacher),
        "--data", str(data),
        "--out", str(out),
        "--max-new-tokens", "8",
        "--batch-size", "2",
        "--allow-truncated",
        "--no-progress",
        *extra,
    ]  # fmt: skip


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert re.search(r"^sdd \w+: error: ", err, re.M), err  # one line, no traceback
    return err


# ------------------------------------------------------------------------------------ out paths


def test_out_that_is_a_file_fails_before_any_work_in_every_stage(tiny_models, tmp_path, cache, capsys, data):
    model = str(tiny_models("llama", 2))
    afile = tmp_path / "afile"
    afile.write_text("mine")
    commands = {
        "prune": ["prune", "--model", model, "-n", "1", "--out", str(afile)],
        "prune --overwrite": ["prune", "--model", model, "-n", "1", "--out", str(afile), "--overwrite"],
        "eval": ["eval", "--model", model, "--tasks", "sdd_synth_ppl", "--out", str(afile)],
        "score": ["score", "--model", model, "--out", str(afile)],
        "specdec": ["specdec", "--target", model, "--draft", model, "--out", str(afile)],
        "merge": ["merge", model, model, "--out", str(afile)],
        "distill": _distill(model, data, afile / "sub"),
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = _error(capsys)
        assert str(afile) in err and ("is a file" in err), (name, err)
    assert afile.read_text() == "mine"
    assert not (cache / "distill").exists()  # nothing was generated


def test_non_empty_out_needs_overwrite(tiny_models, tmp_path, cache, capsys, data):
    model = str(tiny_models("llama", 2))
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for argv in (
        _distill(model, data, out),
        ["eval", "--model", model, "--tasks", "sdd_synth_ppl", "--out", str(out)],
        ["score", "--model", model, "--out", str(out)],
        ["specdec", "--target", model, "--draft", model, "--out", str(out)],
        ["prune", "--model", model, "-n", "1", "--out", str(out)],
    ):
        assert main(argv) == 2, argv[0]
        err = _error(capsys)
        assert f"--out {out} exists and is not empty" in err and "--overwrite" in err, err
    assert (out / "keep.txt").read_text() == "user data"


def test_eval_out_must_not_hold_the_runs_it_reads(tmp_path, capsys):
    out = tmp_path / "eval"
    (out / "run").mkdir(parents=True)
    write_json_atomic(out / "run" / "eval_results.json", {"model": "m", "tasks": {}})
    argv = ["eval", "--compare", str(out / "run"), "--baseline", str(out / "run"), "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 2
    assert "holds" in _error(capsys)
    assert (out / "run" / "eval_results.json").is_file()


def _hold_lock(path: Path, cache: Path) -> subprocess.Popen:
    """Another process holding ``path``'s output lock (as a running sdd command does)."""
    code = (
        "import sys; from sdd_plugin.cache import cache_lock; "
        f"lock = cache_lock({str(path)!r}); lock.acquire(); print('held', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, SDD_CACHE_DIR=str(cache)),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_the_same_out_fails_fast(tiny_models, tmp_path, cache, capsys, data):
    model = str(tiny_models("llama", 2))
    out = tmp_path / "shared-out"
    holder = _hold_lock(out, cache)
    try:
        for argv in (
            _distill(model, data, out),
            ["prune", "--model", model, "-n", "1", "--start", "0", "--out", str(out)],
            ["score", "--model", model, "--out", str(out)],
        ):
            assert main(argv) == 2, argv[0]
            err = _error(capsys)
            assert "is being written by another sdd run" in err and str(out) in err, err
    finally:
        holder.stdin.close()
        holder.wait()
    assert not out.exists() and not (cache / "distill").exists()
    # once the other run is done, the same command works
    assert main(_distill(model, data, out, "--no-nll")) == 0
    assert (out / "distilled.jsonl").is_file()


def test_atomic_outputs_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "b.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "c.txt").write_text("y")
        os.umask(0o027)
        write_text_atomic(tmp_path / "d.txt", "x")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode == {"a.txt": 0o644, "b.json": 0o644, "folder": 0o755, "d.txt": 0o640}


def test_cache_lock_is_reentrant_in_one_process(tmp_path, cache):
    lock = cache_lock(tmp_path / "x")
    with lock, cache_lock(tmp_path / "x"):  # a stage inside a command that holds the same lock
        assert lock.is_locked


# ----------------------------------------------------------------------------------- data errors


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
        ("blank.jsonl", b"\n  \n", "blank.jsonl: the file is empty"),
        (
            "broken.jsonl",
            b'{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": \n',
            r"broken.jsonl: row 2: invalid JSON: Expecting value at column 29",
        ),
        ("list.json", b"[]", "list.json: the file holds an empty list"),
        ("header.csv", b"question,answer\n", "header.csv: the file has a header line but no rows"),
        (
            "types.jsonl",
            b'{"question": "a", "answer": "#### 1"}\n\n{"question": 7, "answer": "#### 2"}\n',
            r"types.jsonl: row 2 \(line 3\): field 'question' is a number here but a string in row 1",
        ),
        (
            "missing.jsonl",
            b'{"question": "a", "answer": "#### 1"}\n{"question": "b"}\n',
            r"missing.jsonl: row 2: missing or invalid field answer",
        ),
    ],
)
def test_data_errors_name_file_and_row(tmp_path, cache, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(_distill("/no/such/model", path, tmp_path / "out")) == 2  # fails before the model
    err = _error(capsys)
    assert re.search(message, err), err


def test_encoding_error_names_the_byte_offset(tmp_path, cache, capsys):
    path = tmp_path / "latin1.jsonl"
    good = b'{"question": "a", "answer": "#### 1"}\n'
    path.write_bytes(good + b'{"question": "caf\xe9", "answer": "#### 2"}\n')
    assert main(_distill("/no/such/model", path, tmp_path / "out")) == 2
    err = _error(capsys)
    offset = len(good) + len(b'{"question": "caf')
    assert f"latin1.jsonl: row 2 (column 18): byte 0xe9 at byte offset {offset} is not UTF-8" in err, err


# ---------------------------------------------------------------------------------------- check


def test_check_names_impossible_pruning_without_a_negative_block_count(tmp_path, capsys, default_model):
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        "base_model: smollm2-135m-instruct\n"
        "plugins: [sdd_plugin.axolotl.SelfDistillationPlugin]\n"
        "sdd_prune: true\nsdd_prune_num_blocks: 40\n"
        "datasets:\n  - path: data.jsonl\n    type: gsm8k\n"
    )
    assert main(["check", str(recipe), "--no-axolotl"]) == 1
    out = capsys.readouterr().out
    assert "-> -10" not in out
    assert "not possible, the model has 30 blocks" in out
    assert "sdd_prune_num_blocks: 40 must be smaller than the model's 30 blocks" in out


# ------------------------------------------------------------------------------- numeric limits


def test_max_new_tokens_beyond_the_context_fails_before_the_weights_load(
    tiny_models, tmp_path, cache, capsys, data
):
    model = tiny_models("llama", 2)  # max_position_embeddings 512
    argv = _distill(model, data, tmp_path / "out")
    argv[argv.index("--max-new-tokens") + 1] = "1000000000"
    assert main(argv) == 2
    err = _error(capsys)
    m = re.search(
        r"max_new_tokens 1000000000 does not fit: the model's context is 512 tokens .*config\.json\) "
        r"and the longest prompt \(row (\d)\) is (\d+) tokens, which leaves (\d+)",
        err,
    )
    assert m, err
    assert int(m.group(2)) + int(m.group(3)) == 512 and 1 <= int(m.group(1)) <= 4
    assert not (cache / "distill").exists() and not (tmp_path / "out").exists()  # nothing generated
    # the largest value that fits is accepted
    argv[argv.index("--max-new-tokens") + 1] = m.group(3)
    argv[argv.index("--out") + 1] = str(tmp_path / "fits")
    assert main([*argv, "--limit", "1", "--no-nll"]) == 0


def test_limit_zero_is_an_error(tmp_path, cache, capsys, data):
    assert main([*_distill("/no/such/model", data, tmp_path / "out"), "--limit", "0"]) == 2
    assert "--limit must be >= 1, got 0" in _error(capsys)


# ------------------------------------------------------------------------------ empty responses


def test_empty_responses_are_skipped_with_a_count_or_stop_with_strict(tiny_models, tmp_path, cache, capsys):
    rows = word_problems(4, seed=2)
    rows[1]["answer"], rows[3]["answer"] = "", "  \n"
    data = tmp_path / "holes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_models("llama", 2)

    assert main([*_distill(model, data, tmp_path / "strict"), "--strict"]) == 2
    err = _error(capsys)
    assert "holes.jsonl: 2 of 4 rows have an empty response (rows 2, 4)" in err, err

    out = tmp_path / "out"
    assert main([*_distill(model, data, out), "--no-nll"]) == 0
    err = capsys.readouterr().err
    assert "skipping 2 of 4 rows with an empty response (rows 2, 4)" in err
    report = json.loads((out / "distill_report.json").read_text())
    assert report["rows"] == 2 and report["skipped_empty_responses"] == 2 and report["skipped_rows"] == [2, 4]
    kept = [json.loads(line)["question"] for line in (out / "distilled.jsonl").read_text().splitlines()]
    assert kept == [rows[0]["question"], rows[2]["question"]]


# -------------------------------------------------------------------------- publishing, resume


def test_outputs_are_one_set_with_the_umask_mode_and_no_leftovers(tiny_models, tmp_path, cache, capsys, data):
    model = tiny_models("llama", 2)
    out = tmp_path / "out"
    assert main([*_distill(model, data, out), "--no-nll", "--limit", "2"]) == 0
    first = json.loads((out / "distill_report.json").read_text())
    assert first["rows"] == 2 and first["output"] == str(out / "distilled.jsonl")
    # a second run replaces the whole set (with --overwrite): rows and report agree
    assert main([*_distill(model, data, out), "--no-nll", "--overwrite"]) == 0
    report = json.loads((out / "distill_report.json").read_text())
    assert report["rows"] == 4 == len((out / "distilled.jsonl").read_text().splitlines())
    assert len((out / "rows.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left
    old = os.umask(0o022)
    os.umask(old)
    want = 0o666 & ~old
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {want}
    # a .jsonl --out: the reports go beside it
    single = tmp_path / "set" / "rows.out.jsonl"
    assert main([*_distill(model, data, single), "--no-nll"]) == 0
    assert sorted(p.name for p in single.parent.iterdir()) == [
        "distill_report.json",
        "distill_report.md",
        "rows.jsonl",
        "rows.out.jsonl",
    ]
    assert main([*_distill(model, data, single), "--no-nll"]) == 2
    assert "already exists" in _error(capsys)


def _nll_lines(cache: Path) -> list[Path]:
    return list(cache.glob("distill/*/nll.jsonl"))


def test_nll_pass_resumes_from_its_row_cache(tiny_models, tmp_path, cache, data):
    model = tiny_models("llama", 2)
    assert main(_distill(model, data, tmp_path / "a")) == 0
    full = json.loads((tmp_path / "a" / "distill_report.json").read_text())
    (nll_file,) = _nll_lines(cache)
    lines = [line for line in nll_file.read_text().splitlines() if line.strip()]
    assert len(lines) >= 4  # one line per scored (prompt, response): originals and rewrites
    # as if killed halfway through the pass, mid-line
    nll_file.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    assert main(_distill(model, data, tmp_path / "b")) == 0
    again = json.loads((tmp_path / "b" / "distill_report.json").read_text())
    for key in ("nll_original", "nll_distilled"):
        assert again[key] == pytest.approx(full[key], abs=1e-3)
    relines = [line for line in nll_file.read_text().splitlines() if line.strip()]
    assert len({json.loads(x)["key"] for x in relines if x.startswith("{") and x.endswith("}")}) == len(lines)


def test_report_after_a_resume_counts_the_whole_run(tiny_models, tmp_path, cache, data):
    model = tiny_models("llama", 2)
    argv = [*_distill(model, data, tmp_path / "part"), "--no-nll", "--batch-size", "1"]
    assert main([*argv, "--limit", "2"]) == 0  # stands for a run stopped after two rows
    argv[argv.index("--out") + 1] = str(tmp_path / "whole")
    assert main(argv) == 0
    report = json.loads((tmp_path / "whole" / "distill_report.json").read_text())
    assert report["cached_rows"] == 2 and report["this_invocation"]["generated_rows"] == 2
    assert report["generated_rows"] == 4
    side = [json.loads(line) for line in (tmp_path / "whole" / "rows.jsonl").read_text().splitlines()]
    assert report["generated_tokens"] == sum(s["num_tokens"] for s in side)
    assert report["tokens_per_s"] > 0 and report["generation_seconds"] > 0
    assert report["tokens_per_s"] * report["generation_seconds"] == pytest.approx(
        report["generated_tokens"], abs=0.006 * report["tokens_per_s"] + 0.01
    )


# --------------------------------------------------------------------------------------- console

#: what must not reach the console (each is in sdd_plugin.cli.console.NOISE or a library's bar)
NOISY = (
    "Failed to load",
    "register_constant",
    "Ignoring clean_up_tokenization_spaces",
    "Loading weights",
    "Generating train split",
    "Traceback",
)


def test_console_shows_stage_lines_and_keeps_the_noise_in_the_log(tiny_models, tmp_path, data):
    """A fresh process (libraries imported anew) with a fresh cache, so the weights load."""
    cache = tmp_path / "fresh-cache"
    # a clean environment: what earlier in-process tests or libraries put into os.environ must not
    # change what this fresh process prints
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env = dict(keep, SDD_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    argv = _distill(tiny_models("llama", 2), data, tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "sdd_plugin.cli", *argv], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sdd_plugin.distill.stage: distilling 4 rows" in proc.stderr  # the stage line
    for text in NOISY:
        assert text not in proc.stderr, (text, proc.stderr)
    (log,) = (cache / "logs").glob("*-sdd-distill-*.log")
    logged = log.read_text()
    assert "distilling 4 rows" in logged
    from sdd_plugin.cli.console import NOISE

    patterns = [re.compile(p) for _, p in NOISE]
    hidden = [line for line in logged.splitlines() if any(p.search(line) for p in patterns)]
    assert hidden, logged  # what the console did not show is in the log


def test_eval_shows_its_own_bar_not_lm_eval_bars(tiny_models, tmp_path, cache, capfd):
    model = str(tiny_models("llama", 2))
    argv = [
        "eval",
        "--model",
        model,
        "--tasks",
        "sdd_synth_ppl",
        "--limit",
        "2",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "sdd eval" in err  # our per-task bar
    for text in (
        "Running loglikelihood",
        "Building contexts",
        "Overwriting default num_fewshot",
        "aggregation",
        "higher_is_better",
    ):
        assert text not in err, (text, err)
    assert (tmp_path / "e" / "eval_results.json").is_file()


def test_specdec_console_has_its_bar_and_not_transformers_notices(tiny_models, tmp_path, cache, capfd):
    model = str(tiny_models("llama", 2))
    out = tmp_path / "sd"
    argv = ["specdec", "--target", model, "--draft", model, "--limit", "1", "--max-new-tokens", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    err = capfd.readouterr().err
    assert "speculative decoding" in err and "generation-related arguments" not in err, err
    assert {p.name for p in out.iterdir()} == {"specdec.json", "specdec.md", "specdec.png"}

"""The cache plumbing: fingerprints, cached artifacts, and the inter-process lock (filelock)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest

from sdd_plugin.cache import (
    cache_lock,
    cached_artifact,
    file_hash,
    fingerprint,
    is_complete,
    stable_hash,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SDD_CACHE_DIR", str(root))  # subprocesses inherit it
    return root


# ----------------------------------------------------------------------------------- fingerprint


def test_fingerprint_same_content_same_key_one_byte_changed_new_key(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "config.json").write_text('{"hidden_size": 8}')
    (a / "sub" / "weights.bin").write_bytes(bytes(range(200)))
    b = tmp_path / "b"
    shutil.copytree(a, b)  # same content elsewhere (and with other mtimes)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a / "config.json") == fingerprint(b / "config.json")

    data = bytearray((b / "sub" / "weights.bin").read_bytes())
    data[100] ^= 1  # one byte, same size
    (b / "sub" / "weights.bin").write_bytes(bytes(data))
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a / "sub" / "weights.bin") != fingerprint(b / "sub" / "weights.bin")

    c = tmp_path / "c"
    shutil.copytree(a, c)
    (c / "config.json").rename(c / "config2.json")  # same bytes under another name
    assert fingerprint(c) != fingerprint(a)

    # hidden entries (temp files, download metadata) are not part of the content
    (a / ".config.json.tmp").write_text("half a file")
    (a / ".cache").mkdir()
    (a / ".cache" / "x").write_text("y")
    assert fingerprint(a) == fingerprint(c.parent / "a")
    assert fingerprint(a) == fingerprint(tmp_path / "a")


def test_fingerprint_of_a_file_is_its_content_hash_and_values_hash_as_values(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"\x00" * 1000)
    assert fingerprint(f) == file_hash(f)  # the embedded model's cache folder keeps its name
    assert fingerprint(f, 12) == file_hash(f, 12)
    assert fingerprint("org/some-model") == stable_hash("org/some-model")  # a hub id is its name
    assert fingerprint({"a": 1}) == stable_hash({"a": 1})
    assert fingerprint(tmp_path / "missing") == stable_hash(str(tmp_path / "missing"))


def test_fingerprint_large_files_by_size_and_mtime(tmp_path, monkeypatch):
    import os

    from sdd_plugin import cache as cache_mod

    monkeypatch.setattr(cache_mod, "CONTENT_HASH_LIMIT", 10)
    f = tmp_path / "shard.safetensors"
    f.write_bytes(b"x" * 100)
    first = fingerprint(f)
    f.write_bytes(b"y" * 100)  # same size: only the modification time tells
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert fingerprint(f) != first
    assert fingerprint(f) != file_hash(f)


def test_fingerprint_adapter_folder_and_merged_model_differ(tiny_models, tmp_path, cache):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sdd_plugin.merge import merge_adapter

    base = tiny_models("llama", 2)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    merged = merge_adapter(adapter)
    assert (merged / "config.json").is_file() and (adapter / "adapter_config.json").is_file()
    keys = {fingerprint(base), fingerprint(adapter), fingerprint(merged)}
    assert len(keys) == 3
    assert merge_adapter(adapter) == merged  # same adapter + base: the cached merge, same key
    assert fingerprint(merged) in keys


# ----------------------------------------------------------------------------- cached_artifact


def test_cached_artifact_builds_once_then_reuses(tmp_path, cache):
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"w")
        (folder / "done.json").write_text(json.dumps({"key": "k1"}))

    target = tmp_path / "artifact"
    first = cached_artifact(target, build, "done.json", key="k1")
    assert not first.reused and first.path == target and (target / "weights.bin").read_bytes() == b"w"
    assert calls[0] != target  # built in a temp folder, renamed when complete
    again = cached_artifact(target, build, "done.json", key="k1")
    assert again.reused and len(calls) == 1
    assert not cached_artifact(target, build, "done.json", rebuild=True).reused and len(calls) == 2
    with pytest.raises(RuntimeError, match="key k2"):  # a stale key is rebuilt (and checked)
        cached_artifact(target, build, "done.json", key="k2")
    assert is_complete(target, "done.json", key="k1")  # the failed build left the old folder alone


def test_cached_artifact_without_its_marker_is_an_error_and_leaves_nothing(tmp_path, cache):
    target = tmp_path / "half"
    with pytest.raises(RuntimeError, match="marker"):
        cached_artifact(target, lambda folder: (folder / "weights.bin").write_bytes(b"w"), "done.json")
    assert not target.exists() and list(tmp_path.iterdir()) == [cache]


def test_cached_artifact_in_place_keeps_partial_work(tmp_path, cache):
    target = tmp_path / "resumable"
    target.mkdir()
    (target / "rows.jsonl").write_text("row 0\n")  # left by a killed run

    def build(folder: Path) -> None:
        assert folder == target and (folder / "rows.jsonl").read_text() == "row 0\n"
        (folder / "report.json").write_text("{}")

    assert not cached_artifact(target, build, "report.json", in_place=True).reused
    assert cached_artifact(target, build, "report.json", in_place=True).reused


_BUILD_ONCE = """
import sys
from pathlib import Path
from sdd_plugin.cache import cached_artifact

def build(folder):
    with open(sys.argv[2], "a") as log:
        log.write("built\\n")
    (folder / "done").write_text("ok")

print(cached_artifact(Path(sys.argv[1]), build, "done").reused)
"""


def test_two_processes_build_one_artifact_once(tmp_path, cache):
    log = tmp_path / "builds.log"
    target = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_ONCE, str(target), str(log)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    reused = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert log.read_text() == "built\n" and reused == ["False", "True"]
    assert (target / "done").read_text() == "ok"


# ------------------------------------------------------------------------------------ the lock

_TRY_LOCK = """
import sys
import filelock
from sdd_plugin.cache import cache_lock

lock = cache_lock(sys.argv[1])
try:
    lock.acquire(blocking=False)
except filelock.Timeout:
    print("blocked")
else:
    print("acquired")
    lock.release()
"""

_WAIT_FOR_LOCK = """
import sys
from pathlib import Path
from sdd_plugin.cache import cache_lock

Path(sys.argv[2]).write_text("trying")
with cache_lock(sys.argv[1]):
    print("got it")
"""


def test_cache_lock_is_a_filelock_that_a_second_process_waits_for(tmp_path, cache):
    entry = tmp_path / "entry"
    lock = cache_lock(entry)
    assert isinstance(lock, filelock.BaseFileLock)
    assert Path(lock.lock_file).parent == cache / "locks"  # never inside the entry itself

    def try_lock() -> str:
        args = [sys.executable, "-c", _TRY_LOCK, str(entry)]
        return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout.strip()

    assert try_lock() == "acquired"
    trying = tmp_path / "trying"
    with lock:
        assert try_lock() == "blocked"  # another process cannot take it while we hold it
        waiter = subprocess.Popen(
            [sys.executable, "-c", _WAIT_FOR_LOCK, str(entry), str(trying)], stdout=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while not trying.exists() and waiter.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trying.exists()
        assert waiter.poll() is None  # it waits for us
    out, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0 and out.strip() == "got it"  # and gets the lock once we let go
    assert try_lock() == "acquired"

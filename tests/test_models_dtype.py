"""dtype resolution: 'auto' picks bf16 only where the machine runs it natively."""

import logging

import pytest

from sdd_plugin import bench, models


def test_resolve_dtype_auto_follows_the_cpu_flags(monkeypatch, caplog):
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2", "fma"})
    assert not models.fast_dtype_available("bfloat16")
    assert models.resolve_dtype("auto") == "float32"
    with caplog.at_level(logging.WARNING, logger="sdd_plugin.models"):
        assert models.warn_if_slow_dtype("bfloat16", "evaluation") is True
    assert "no native bfloat16 matmuls" in caplog.text

    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    if not models.fast_dtype_available("float32") or __import__("torch").cuda.is_available():
        pytest.skip("CUDA machine: the CPU flags do not decide")
    assert models.resolve_dtype("auto") == "bfloat16"
    assert models.warn_if_slow_dtype("bfloat16", "evaluation") is False
    assert models.resolve_dtype("float16") == "float16"
    with pytest.raises(ValueError, match="got 'int8'"):
        models.resolve_dtype("int8")


def test_cpu_flags_are_read_from_this_machine():
    import platform

    import torch

    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flags are read from /proc/cpuinfo's x86 'flags' line")
    flags = models._cpu_flags()
    assert "sse2" in flags  # every x86-64 CPU has it
    # torch's own CPU probe (CPUID) agrees with the flags read from /proc/cpuinfo
    capability = torch.backends.cpu.get_cpu_capability()
    assert {"AVX2": "avx2", "AVX512": "avx512f"}.get(capability, "sse2") in flags, capability


def test_presets_accept_explicit_dtypes_and_reject_others():
    assert bench.get_preset("full", dtype="float32").dtype == "float32"
    with pytest.raises(ValueError):
        bench.get_preset("full", dtype="int8")


def test_machine_summary_names_cores_simd_and_bf16_support(monkeypatch):
    import os

    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2"})
    line = models.machine_summary()
    assert f"{os.cpu_count()} cores" in line and "torch " in line and "no native bf16" in line
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512_bf16"})
    assert ", native bf16" in models.machine_summary()

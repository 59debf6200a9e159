"""Engine options of the generation backends, as users set them: ``sdd distill --backend-arg
KEY=VALUE`` and the recipe key ``sdd_distill_backend_args`` (a dict).

Each built-in backend names its options with a pydantic model (its ``options`` attribute:
:class:`HFOptions`, :class:`VLLMOptions`); :func:`parse_backend_args` checks a user's keys and
values against it before any weights load, and the result goes into
:attr:`~sdd_plugin.interfaces.GenerationSettings.extra`. ``auto`` (and Ray with ``auto``) accepts
the options of either backend it may pick; each backend reads its own. A third-party backend
without an ``options`` model takes any keys as given.

:func:`output_settings` drops the options that only size the engine (memory, context) and never
change a generated token, so cache keys stay the same when, e.g., the KV cache is made smaller
after an out-of-memory error and the run resumes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: ``extra`` keys with their own switch (``--dtype`` / ``sdd_distill_dtype``, ``sdd_kd_top_k``).
OWN_SWITCH = {"dtype": "--dtype / sdd_distill_dtype", "logprobs_top_k": "sdd_kd_top_k / kd_top_k"}

#: Options that size the engine but leave the generated tokens as they are (not in cache keys).
RESOURCE_OPTIONS = frozenset({"kv_cache_gib", "gpu_memory_utilization", "max_model_len"})


class HFOptions(BaseModel):
    """Options of the ``hf`` backend."""

    model_config = ConfigDict(extra="forbid")

    prompt_lookup: int | None = Field(
        None, ge=0, description="draft tokens per step from the row's own prompt (0 = off)"
    )
    engine: Literal["decode", "generate"] | None = Field(
        None, description="decode (the batched engine) or generate (transformers' model.generate)"
    )
    attention: str | None = Field(None, description="gqa (default), default, or an attention implementation")
    device: str | None = Field(None, description="torch device (default: cuda when available, else cpu)")
    cache_implementation: str | None = Field(None, description="passed to generate (engine: generate)")


class VLLMOptions(BaseModel):
    """Options of the ``vllm`` backend (its ``vllm.LLM`` engine)."""

    model_config = ConfigDict(extra="forbid")

    enforce_eager: bool | None = Field(
        None, description="no torch.compile / CUDA graphs: starts faster, decodes slower"
    )
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs one engine spans")
    kv_cache_gib: float | None = Field(None, gt=0, description="KV cache size in GiB (CPU default 2)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="fraction of GPU memory vLLM may take (weights + KV cache)"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="longest prompt + rewrite (default: the model's)"
    )
    vllm_args: dict[str, Any] | None = Field(None, description="further vllm.LLM keyword arguments, as is")


#: The option models of the backends ``auto`` may pick.
AUTO_CANDIDATES = ("hf", "vllm")


def _options_models(backend: str) -> list[type[BaseModel]] | None:
    """The option models that ``backend`` accepts (None: a backend that takes any keys)."""
    from ..plugins import get_backend

    names = AUTO_CANDIDATES if backend == "auto" else (backend,)
    models = [getattr(get_backend(name), "options", None) for name in names]
    if any(m is None for m in models):
        return None
    return models


def _name(where: str, key: str) -> str:
    """How an error names one option: ``--backend-arg key`` or ``sdd_distill_backend_args.key``."""
    if not where:
        return key
    return f"{where} {key}" if where.startswith("-") else f"{where}.{key}"


def parse_value(text: str) -> Any:
    """A ``--backend-arg`` value as YAML reads it: ``true`` -> True, ``0.9`` -> 0.9, ``{a: 1}`` -> a dict."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def pairs_to_dict(pairs: Iterable[str], where: str = "--backend-arg") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: value}`` (values through :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where} {pair!r}: expected KEY=VALUE, e.g. {where} enforce_eager=true")
        out[key.strip()] = parse_value(value)
    return out


def parse_backend_args(
    backend: str, raw: Mapping[str, Any] | None, where: str = "--backend-arg"
) -> dict[str, Any]:
    """Check ``raw`` against ``backend``'s options; return the ``extra`` entries it sets.

    Raises ValueError naming each unknown key (with the known ones) or bad value, and keys that
    have a switch of their own (:data:`OWN_SWITCH`). An unknown backend name raises too."""
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping of option -> value, got {raw!r}")
    problems = [
        f"{_name(where, key)}: set it with {switch}, not as a backend option"
        for key, switch in OWN_SWITCH.items()
        if key in raw
    ]
    rest = {str(k): v for k, v in raw.items() if k not in OWN_SWITCH}
    models = _options_models(backend)
    if models is None:
        if problems:
            raise ValueError("; ".join(problems))
        return rest
    known = sorted({name for m in models for name in m.model_fields})
    for key in rest:
        if key not in known:
            guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            problems.append(
                f"{_name(where, key)}: not an option of the {backend} backend; {hint}known: {', '.join(known)}"
            )
    if not problems:
        for m in models:
            mine = {k: v for k, v in rest.items() if k in m.model_fields}
            try:
                m.model_validate(mine)
            except ValidationError as exc:
                for err in exc.errors():
                    key = ".".join(str(p) for p in err["loc"])
                    problems.append(f"{_name(where, key)}: {err['msg']} (got {err.get('input')!r})")
    if problems:
        raise ValueError("; ".join(problems))
    out: dict[str, Any] = {}
    for m in models:
        mine = {k: v for k, v in rest.items() if k in m.model_fields}
        out.update(m.model_validate(mine).model_dump(exclude_unset=True))
    return out


def output_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A ``GenerationSettings`` dict without :data:`RESOURCE_OPTIONS` in its ``extra``: what the
    generated tokens depend on (for cache keys)."""
    out = dict(settings)
    extra = out.get("extra")
    if isinstance(extra, Mapping):
        out["extra"] = {k: v for k, v in extra.items() if k not in RESOURCE_OPTIONS}
    return out

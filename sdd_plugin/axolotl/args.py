"""Recipe keys of the Axolotl plugin: one pydantic model whose fields become top-level keys.

Only user-facing ``sdd_*`` keys live here; the plugin's own run state is in
:class:`sdd_plugin.axolotl.plugin.PluginState`.

Axolotl merges this model into its own config schema (``get_input_args``), so every key here is
validated with the rest of the recipe. The plugin also validates the ``sdd_*`` keys itself in
``register`` (before any weights load) and rejects unknown ``sdd_*`` keys, which Axolotl would
otherwise drop silently.

This module only needs pydantic (no axolotl import), so ``sdd check`` can use it anywhere.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

#: Prefix of every key this plugin owns.
PREFIX = "sdd_"


def _check_registered(kind: str, value: str | None, key: str) -> str | None:
    if value is None:
        return None
    from ..plugins import available

    names = available(kind)
    if value not in names:
        raise ValueError(f"{key}: unknown {kind} {value!r}; registered: {', '.join(names) or '(none)'}")
    return value


class SDDArgs(BaseModel):
    """The ``sdd_*`` recipe keys (defaults = the paper's setting: prune 6 blocks, then SDFT)."""

    # --- pruning -------------------------------------------------------------------------------
    sdd_prune: bool = Field(True, description="prune base_model before training (False = keep all blocks)")
    sdd_prune_num_blocks: int = Field(6, ge=1, description="number of contiguous decoder blocks to remove")
    sdd_prune_metric: str = Field("angular", description="block-importance metric (see `sdd plugins`)")
    sdd_prune_calibration: str | None = Field(
        None, description="calibration text for scoring: file or hub id (null = built-in default)"
    )
    sdd_prune_calibration_limit: int | None = Field(
        None, ge=1, description="number of calibration texts (null = the pruning default)"
    )
    sdd_prune_start: int | None = Field(
        None, ge=0, description="first block to remove; overrides the metric (null = chosen by the metric)"
    )
    # --- distillation --------------------------------------------------------------------------
    sdd_distill: bool = Field(
        True, description="rewrite the datasets' responses with the teacher (False = SFT)"
    )
    sdd_teacher: str | None = Field(
        None, description="teacher model: name, folder or hub id (null = the unpruned base_model)"
    )
    sdd_distill_template: str | None = Field(
        None, description="SDFT template (null = chosen by dataset format)"
    )
    sdd_distill_checker: str | None = Field(None, description="answer checker (null = chosen by template)")
    sdd_distill_backend: str = Field(
        "auto", description="teacher generation backend (auto: vllm on CUDA when installed, else hf)"
    )
    sdd_distill_backend_args: dict[str, Any] | None = Field(
        None,
        description="engine options of the backend, e.g. {enforce_eager: true, tensor_parallel_size: 2, "
        "gpu_memory_utilization: 0.85, max_model_len: 4096} for vllm (README: Backends)",
    )
    sdd_distill_ray: bool | str = Field(
        False, description="spread teacher generation over Ray (true: start Ray here; or a cluster address)"
    )
    sdd_distill_ray_workers: int | None = Field(
        None, ge=1, description="Ray actors for teacher generation (null = one per GPU / node)"
    )
    sdd_distill_max_new_tokens: int = Field(256, ge=1, description="max tokens per teacher rewrite")
    sdd_distill_batch_size: int = Field(16, ge=1, description="teacher generation batch size")
    sdd_distill_do_sample: bool = Field(False, description="sample instead of greedy decoding")
    sdd_distill_temperature: float = Field(0.7, gt=0, description="sampling temperature")
    sdd_distill_top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling p")
    sdd_distill_seed: int = Field(0, description="sampling seed")
    sdd_distill_retries: int = Field(
        0,
        ge=0,
        description="re-generate rejected rewrites up to N times with sampling, keep the first that passes",
    )
    sdd_distill_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="teacher weights dtype for the rewrites (bfloat16: 2-3x faster matmuls on AVX512-BF16/AMX CPUs)",
    )
    sdd_distill_measure_nll: bool = Field(
        True, description="report the teacher's NLL of original vs distilled responses (distribution shift)"
    )
    sdd_distill_limit: int | None = Field(
        None, ge=1, description="distil (and train on) only the first N rows of each dataset"
    )
    # --- logit distillation (SDD + KD) ---------------------------------------------------------
    sdd_kd: bool = Field(
        False,
        description="also keep the teacher's top-k log-probs of the distilled set and train on them with "
        "axolotl's KD plugin (list axolotl.integrations.kd.KDPlugin; kd_trainer, kd_alpha, kd_ce_alpha, "
        "kd_temperature)",
    )
    sdd_kd_top_k: int = Field(20, ge=1, description="teacher log-probs kept per token for sdd_kd")
    # --- caches --------------------------------------------------------------------------------
    sdd_cache_dir: str | None = Field(
        None,
        description="cache for pruned models and distilled data (null = $SDD_CACHE_DIR or ~/.cache/sdd-plugin)",
    )

    @field_validator("sdd_prune_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _check_registered("metric", v, "sdd_prune_metric")

    @field_validator("sdd_distill_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return _check_registered("template", v, "sdd_distill_template")

    @field_validator("sdd_distill_checker")
    @classmethod
    def _checker(cls, v: str | None) -> str | None:
        return _check_registered("checker", v, "sdd_distill_checker")

    @field_validator("sdd_distill_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        return v if v == "auto" else _check_registered("backend", v, "sdd_distill_backend")

    @field_validator("sdd_distill_backend_args")
    @classmethod
    def _backend_args(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        backend = info.data.get("sdd_distill_backend")
        if not v or backend is None:  # a bad backend name has its own error
            return v
        from ..generation.backend_args import parse_backend_args

        return parse_backend_args(backend, v, where="")


#: Every key this plugin accepts (all user-facing; what the plugin records for itself is not a key).
KNOWN_KEYS: frozenset[str] = frozenset(SDDArgs.model_fields)


class RecipeKeyError(ValueError):
    """An ``sdd_*`` recipe key that is misspelled or has a bad value."""


def unknown_sdd_keys(raw: dict[str, Any]) -> list[str]:
    """Messages for every key that looks like ours (``sdd_``/``sdd-`` prefix) but is not a field."""
    problems = []
    for key in raw:
        k = str(key)
        if not k.lower().startswith(("sdd_", "sdd-")) or k in KNOWN_KEYS:
            continue
        guess = difflib.get_close_matches(k.lower().replace("-", "_"), sorted(KNOWN_KEYS), n=1, cutoff=0.6)
        hint = f"; did you mean {guess[0]!r}?" if guess else f"; known keys: {', '.join(sorted(KNOWN_KEYS))}"
        problems.append(f"unknown recipe key {k!r}{hint}")
    return problems


def parse_sdd_args(raw: dict[str, Any]) -> SDDArgs:
    """Validate the ``sdd_*`` keys of a raw recipe; raise :class:`RecipeKeyError` naming each bad key."""
    problems = unknown_sdd_keys(raw)
    values = {k: v for k, v in raw.items() if k in KNOWN_KEYS}
    args = None
    try:
        args = SDDArgs.model_validate(values)
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "?"
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if msg.startswith(f"{key}: "):
                msg = msg[len(key) + 2 :]
            problems.append(f"{key}: {msg} (got {err.get('input')!r})")
    if problems:
        raise RecipeKeyError("sdd-plugin recipe error: " + "; ".join(problems))
    assert args is not None
    return args


def key_table() -> list[tuple[str, str, str]]:
    """``(key, default, description)`` for every user-facing key (used by the README and `sdd check`)."""
    rows = []
    for name, field in SDDArgs.model_fields.items():
        default = (
            "null"
            if field.default is None
            else str(field.default).lower()
            if isinstance(field.default, bool)
            else str(field.default)
        )
        rows.append((name, default, field.description or ""))
    return rows

"""The prune stage: score blocks, remove the least important run, save a loadable HF checkpoint.

``prune(...)`` writes the checkpoint with its scores, heat map and a model card, reusing a
content-addressed cache folder when no ``out`` is given (:func:`pruned_path` names it without
pruning); :func:`load_prune_result` reads a finished pruned folder back.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import (
    cache_dir,
    cached_artifact,
    claim_output,
    fingerprint,
    is_complete,
    stable_hash,
    write_json_atomic,
)
from .surgery import count_parameters, decoder_layers, remove_blocks, validate_blocks

log = logging.getLogger(__name__)

__all__ = [
    "PRUNE_FILE",
    "PruneResult",
    "count_parameters",
    "decoder_layers",
    "load_prune_result",
    "prune",
    "pruned_path",
    "remove_blocks",
    "validate_blocks",
]

#: The record of a pruned folder (removed blocks, source, scores); written last.
PRUNE_FILE = "sdd_prune.json"
#: Files that mark a finished pruned folder (the cache is reused only when they all exist).
_MARKERS = (PRUNE_FILE, "config.json")


# ---------------------------------------------------------------------------------------------
# prune: score -> remove -> save (+ model card)
# ---------------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    """What ``prune`` wrote."""

    out_dir: Path
    removed_blocks: list[int]
    num_layers_before: int
    num_layers_after: int
    params_before: int
    params_after: int
    metric: str
    table_path: Path | None = None
    heatmap_path: Path | None = None
    score_result: Any = None
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params_removed(self) -> int:
        """Parameters removed by the surgery."""
        return self.params_before - self.params_after

    def summary(self) -> str:
        """One human-readable paragraph."""
        pct = 100.0 * self.params_removed / max(self.params_before, 1)
        return (
            f"removed blocks {self.removed_blocks} ({self.metric}); layers {self.num_layers_before} -> "
            f"{self.num_layers_after}; parameters {self.params_before:,} -> {self.params_after:,} "
            f"(-{self.params_removed:,}, -{pct:.1f}%); saved to {self.out_dir}"
        )


def _read_num_layers(model_dir: Path) -> int:
    cfg_path = model_dir / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {cfg_path}: {exc}") from exc
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("num_hidden_layers"), int):
            return int(c["num_hidden_layers"])
    raise ValueError(f"{cfg_path} has no num_hidden_layers")


def _validate_num_blocks(num_blocks: Any, num_layers: int) -> int:
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int):
        raise ValueError(f"num_blocks must be an integer, got {num_blocks!r}")
    if num_blocks <= 0 or num_blocks >= num_layers:
        raise ValueError(
            f"num_blocks={num_blocks} is out of range: it must satisfy 0 < num_blocks < {num_layers} "
            f"(the model has {num_layers} blocks)"
        )
    return num_blocks


def load_prune_result(folder: str | os.PathLike) -> PruneResult | None:
    """The :class:`PruneResult` recorded in a finished pruned folder (``reused=True``), or None
    when ``folder`` is not one (no ``sdd_prune.json`` + ``config.json``, or an unreadable record)."""
    folder = Path(folder)
    if not is_complete(folder, _MARKERS):
        return None
    try:
        meta = json.loads((folder / PRUNE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    heat = folder / "heatmap.png"
    return PruneResult(
        out_dir=folder,
        removed_blocks=list(meta["removed_blocks"]),
        num_layers_before=meta["num_layers_before"],
        num_layers_after=meta["num_layers_after"],
        params_before=meta["params_before"],
        params_after=meta["params_after"],
        metric=meta["metric"],
        table_path=folder / PRUNE_FILE,
        heatmap_path=heat if heat.is_file() else None,
        score_result=None,
        reused=True,
        extra=meta,
    )


@dataclass
class _Plan:
    """Validated settings of one prune: what to load, what to remove, where the cache keeps it."""

    model_dir: Path
    num_layers: int
    num_blocks: int
    token_mode: str
    texts: list[str]
    key: str

    def cache_folder(self, metric: str) -> Path:
        return cache_dir() / "pruned" / f"{self.model_dir.name}-n{self.num_blocks}-{metric}-{self.key}"


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _plan(
    model: str | os.PathLike,
    num_blocks: Any,
    metric: str,
    calibration: str | os.PathLike | None,
    start: Any,
    tokens: str | None,
    num_samples: Any,
    max_length: Any,
    dtype: str,
    text_field: str | None,
) -> _Plan:
    """Check every input (before any weights load) and compute the cache key."""
    from .. import plugins
    from ..models import resolve_model
    from .calibration import calibration_identity, load_calibration_texts

    model_dir = resolve_model(model)
    num_layers = _read_num_layers(model_dir)
    num_blocks = _validate_num_blocks(num_blocks, num_layers)
    metric_obj = plugins.get_metric(metric)
    if tokens is not None and tokens not in ("last", "all"):
        raise ValueError(f"tokens must be 'last' or 'all', got {tokens!r}")
    token_mode = tokens or metric_obj.default_tokens
    if start is not None:
        if isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"start must be an integer, got {start!r}")
        if start < 0 or start + num_blocks > num_layers:
            raise ValueError(
                f"start={start} with num_blocks={num_blocks} is out of range for {num_layers} blocks "
                f"(need 0 <= start <= {num_layers - num_blocks})"
            )
    _check_positive("num_samples", num_samples)
    _check_positive("max_length", max_length)
    texts = load_calibration_texts(calibration, limit=num_samples, text_field=text_field)
    key = {
        "version": 2,
        "model": fingerprint(model_dir),
        "num_blocks": num_blocks,
        "metric": metric,
        "tokens": token_mode,
        "calibration": calibration_identity(calibration, text_field=text_field),
        "num_samples": num_samples,
        "max_length": max_length,
        "start": start,
        "dtype": dtype,
    }
    return _Plan(model_dir, num_layers, num_blocks, token_mode, texts, stable_hash(key))


def pruned_path(
    model: str | os.PathLike = "smollm2-135m-instruct",
    num_blocks: int = 6,
    metric: str = "angular",
    calibration: str | os.PathLike | None = None,
    start: int | None = None,
    tokens: str | None = None,
    num_samples: int = 64,
    max_length: int = 256,
    dtype: str = "float32",
    text_field: str | None = None,
) -> Path:
    """The cache folder ``prune(...)`` with these settings and ``out=None`` writes to (and reuses);
    nothing is pruned. Validates the inputs like :func:`prune`."""
    plan = _plan(
        model, num_blocks, metric, calibration, start, tokens, num_samples, max_length, dtype, text_field
    )
    return plan.cache_folder(metric)


def prune(
    model: str | os.PathLike = "smollm2-135m-instruct",
    num_blocks: int = 6,
    metric: str = "angular",
    calibration: str | os.PathLike | None = None,
    start: int | None = None,
    out: str | os.PathLike | None = None,
    tokens: str | None = None,
    num_samples: int = 64,
    max_length: int = 256,
    batch_size: int = 8,
    dtype: str = "float32",
    text_field: str | None = None,
    overwrite: bool = False,
) -> PruneResult:
    """Score the blocks of ``model``, remove ``num_blocks`` of them and save a HF checkpoint.

    ``start`` forces the removed run to ``[start, start+num_blocks)`` (the table is still computed
    for the model card). With ``out=None`` the result goes to a content-addressed folder under
    ``cache_dir()/pruned`` (:func:`pruned_path`) and is reused when complete; processes pruning the
    same model with the same settings at once prune it once (:func:`sdd_plugin.cache.cached_artifact`).
    Bad input (``num_blocks``, ``metric``, ``start``, ``tokens``, calibration source) raises before
    any weights load.
    """
    plan = _plan(
        model, num_blocks, metric, calibration, start, tokens, num_samples, max_length, dtype, text_field
    )
    _check_positive("batch_size", batch_size)
    if out is None:
        out_dir = plan.cache_folder(metric)
        claim = nullcontext(out_dir)  # a cache folder: a second run waits for the first and reuses it
    else:
        done = load_prune_result(out) if Path(out).is_dir() else None
        same = done is not None and done.extra.get("cache_key") == plan.key
        claim = claim_output(out, overwrite=overwrite or same)  # a second run into --out fails fast

    built: list[PruneResult] = []

    def build(tmp: Path) -> None:
        built.append(
            _prune_into(tmp, out_dir, model, plan, metric, calibration, start, batch_size, max_length, dtype)
        )

    with claim as out_dir:
        artifact = cached_artifact(out_dir, build, _MARKERS, rebuild=overwrite)
    if artifact.reused:
        log.info("reusing pruned model %s", out_dir)
        result = load_prune_result(out_dir)
        assert result is not None
        return result
    log.info("%s", built[0].summary())
    return built[0]


def _prune_into(
    tmp: Path,
    out_dir: Path,
    model: str | os.PathLike,
    plan: _Plan,
    metric: str,
    calibration: str | os.PathLike | None,
    start: int | None,
    batch_size: int,
    max_length: int,
    dtype: str,
) -> PruneResult:
    """Load, score, cut and save into ``tmp`` (renamed to ``out_dir`` afterwards)."""
    from ..models import load_model
    from .scoring import score_blocks

    num_blocks = plan.num_blocks
    lm, tok = load_model(plan.model_dir, dtype=dtype)
    score = score_blocks(
        lm,
        tok,
        plan.texts,
        metric=metric,
        tokens=plan.token_mode,
        batch_size=batch_size,
        max_length=max_length,
    )
    removed = list(range(start, start + num_blocks)) if start is not None else score.removed(num_blocks)
    params_before = count_parameters(lm)
    remove_blocks(lm, removed)
    params_after = count_parameters(lm)
    num_after = len(decoder_layers(lm))

    meta = {
        "source_model": str(model),
        "source_path": str(plan.model_dir),
        "metric": metric,
        "tokens": plan.token_mode,
        "calibration": str(calibration) if calibration is not None else "builtin",
        "num_calibration_texts": len(plan.texts),
        "max_length": max_length,
        "num_blocks": num_blocks,
        "start": start,
        "removed_blocks": removed,
        "num_layers_before": plan.num_layers,
        "num_layers_after": num_after,
        "params_before": params_before,
        "params_after": params_after,
        "dtype": dtype,
        "cache_key": plan.key,
        "score": score.to_json(),
    }
    lm.config.name_or_path = ""
    lm.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    heat = tmp / "heatmap.png"
    score.plot_heatmap(
        heat, title=f"{plan.model_dir.name}: {metric} d(l, n)", highlight=(removed, num_blocks)
    )
    (tmp / "README.md").write_text(_model_card(meta, score), encoding="utf-8")
    write_json_atomic(tmp / PRUNE_FILE, meta)
    return PruneResult(
        out_dir=out_dir,
        removed_blocks=removed,
        num_layers_before=plan.num_layers,
        num_layers_after=num_after,
        params_before=params_before,
        params_after=params_after,
        metric=metric,
        table_path=out_dir / PRUNE_FILE,
        heatmap_path=out_dir / "heatmap.png",
        score_result=score,
        extra=meta,
    )


def _model_card(meta: dict[str, Any], score) -> str:
    removed = meta["removed_blocks"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [layer-pruning, sdd-plugin]",
        "---",
        "",
        f"# {Path(meta['source_path']).name} pruned: {meta['num_layers_before']} -> {meta['num_layers_after']} blocks",
        "",
        "Pruned with [sdd-plugin](https://arxiv.org/abs/2410.09982) (block scoring after Gromov et al., "
        "arXiv 2403.17887). Heal it with (self-data-distilled) fine-tuning before use.",
        "",
        "| | |",
        "|---|---|",
        f"| source model | `{meta['source_model']}` |",
        f"| metric | `{meta['metric']}` (tokens: `{meta['tokens']}`) |",
        f"| calibration | `{meta['calibration']}` ({meta['num_calibration_texts']} texts, max {meta['max_length']} tokens) |",
        f"| removed blocks | {removed}"
        + (" (explicit start)" if meta.get("start") is not None else "")
        + " |",
        f"| layers | {meta['num_layers_before']} -> {meta['num_layers_after']} |",
        f"| parameters | {meta['params_before']:,} -> {meta['params_after']:,} "
        f"(-{meta['params_before'] - meta['params_after']:,}) |",
        "",
        f"## Best start block per n ({meta['metric']})",
        "",
        score.markdown_table(),
        "",
        "![d(l, n) heatmap](heatmap.png)",
        "",
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")',
        'tok = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")',
        "```",
        "",
        "All metadata, including the full d(l, n) table, is in `sdd_prune.json`.",
        "",
    ]
    return "\n".join(lines)

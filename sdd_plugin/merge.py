"""Merge fine-tuned models with mergekit (SLERP for two models, TIES for several).

Every input is a Hugging Face model folder or a peft LoRA adapter folder. Adapters are first merged
into their base weights with peft ``merge_and_unload()`` (cached under ``cache_dir()/lora-merged``,
keyed by the adapter's files and its base). Before mergekit runs, all inputs must share one layer
layout: the same architecture and shapes and, for sdd-pruned models, the same removed blocks of the
same source model (read from ``sdd_prune.json``); otherwise a ``ValueError`` names both models and
the differing key. The mergekit YAML is written to ``<out>/mergekit.yaml`` (rerun it with
``mergekit-yaml mergekit.yaml OUT``) and executed through mergekit's Python API on CPU.
``sdd_merge.json`` records the method, inputs, parameters and layout; ``README.md`` is a short card.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import (
    cache_dir,
    cached_artifact,
    claim_output,
    fingerprint,
    is_complete,
    stable_hash,
    write_json_atomic,
    write_text_atomic,
)
from .checkpoints import ADAPTER_CONFIG, is_adapter
from .models import DTYPES

log = logging.getLogger(__name__)

METHODS = ("slerp", "ties")
MERGE_FILE = "sdd_merge.json"
PRUNE_FILE = "sdd_prune.json"
#: Written last into a folder holding an adapter merged into its base.
LORA_MERGE_FILE = "sdd_lora_merge.json"

__all__ = [
    "ADAPTER_CONFIG",
    "LAYOUT_KEYS",
    "MERGE_FILE",
    "METHODS",
    "MergeInput",
    "build_mergekit_config",
    "check_layouts",
    "is_adapter",
    "merge_adapter",
    "merge_models",
    "model_layout",
    "resolve_input",
]

#: config keys that must agree for two models to be merged tensor by tensor
LAYOUT_KEYS = (
    "model_type",
    "architectures",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "layer_types",
)


@dataclass
class MergeInput:
    """One input of a merge: a model folder, or a LoRA adapter with the base it applies to."""

    spec: str
    kind: str  # "model" | "lora"
    path: Path  # the model folder, or the adapter folder
    base: Path | None = None  # for adapters: the resolved base model folder
    layout: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_folder(self) -> Path:
        """The folder whose config defines the layout (the model itself, or the adapter's base)."""
        return self.base if self.kind == "lora" and self.base is not None else self.path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def model_layout(folder: str | os.PathLike) -> dict[str, Any]:
    """The layer layout of a HF model folder: shape-defining config keys + sdd pruning provenance."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    cfg = _read_json(cfg_path)
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    layout: dict[str, Any] = {}
    for key in LAYOUT_KEYS:
        value = cfg.get(key, text.get(key))
        if value is not None:
            layout[key] = value
    if layout.get("tie_word_embeddings") is None:
        layout.pop("tie_word_embeddings", None)
    prune_meta = folder / PRUNE_FILE
    if prune_meta.is_file():
        meta = _read_json(prune_meta)
        layout["removed_blocks"] = list(meta.get("removed_blocks") or [])
        layout["source_model"] = str(meta.get("source_path") or meta.get("source_model") or "")
        layout["source_num_layers"] = meta.get("num_layers_before")
    else:
        layout["removed_blocks"] = None
        layout["source_model"] = None
        layout["source_num_layers"] = None
    return layout


def check_layouts(named: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Raise ``ValueError`` naming both models and the key if any two layouts differ; return the layout."""
    if not named:
        raise ValueError("no models to compare")
    ref_name, ref = named[0]
    for name, layout in named[1:]:
        for key in sorted(set(ref) | set(layout)):
            a, b = ref.get(key), layout.get(key)
            if key == "source_model" and a and b and Path(a).resolve() == Path(b).resolve():
                continue
            if a != b:
                what = "removed blocks (sdd_prune.json)" if key == "removed_blocks" else key
                raise ValueError(
                    f"cannot merge models with different layer layouts: {what} is {a!r} in {ref_name} "
                    f"but {b!r} in {name}"
                )
    return ref


def resolve_input(spec: str | os.PathLike, base_model: str | os.PathLike | None = None) -> MergeInput:
    """Classify one merge input (model folder / LoRA adapter) and read its layout; no weights load."""
    from .models import resolve_model

    spec_s = str(spec)
    path = Path(spec_s).expanduser()
    if path.is_dir() and is_adapter(path):
        cfg = _read_json(path / ADAPTER_CONFIG)
        peft_type = str(cfg.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise ValueError(
                f"{path}: only LoRA adapters can be merged, adapter_config.json says {peft_type}"
            )
        recorded = cfg.get("base_model_name_or_path")
        base = None
        if recorded:
            try:
                base = resolve_model(recorded)
            except FileNotFoundError:
                if base_model is None:
                    raise FileNotFoundError(
                        f"the base model of adapter {path}, {recorded!r} (base_model_name_or_path in "
                        f"{ADAPTER_CONFIG}), cannot be found; pass the base model explicitly"
                    ) from None
        if base is None:
            if base_model is None:
                raise ValueError(
                    f"{path / ADAPTER_CONFIG} has no base_model_name_or_path; pass the base model"
                )
            base = resolve_model(base_model)
        return MergeInput(spec_s, "lora", path, base=base, layout=model_layout(base))
    folder = resolve_model(spec_s)
    return MergeInput(spec_s, "model", folder, layout=model_layout(folder))


def _adapter_key(inp: MergeInput, dtype: str) -> str:
    base = fingerprint(inp.base) if inp.base else None
    return stable_hash({"adapter": fingerprint(inp.path), "base": base, "dtype": dtype, "version": 2})


def merge_adapter(
    adapter: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    dtype: str = "float32",
) -> Path:
    """Merge a LoRA adapter into its base with peft ``merge_and_unload()`` and save a full model folder.

    Without ``out`` the result is cached under ``cache_dir()/lora-merged`` keyed by the adapter's
    files and base, and reused. The base's ``sdd_prune.json`` is copied along.
    """
    inp = resolve_input(adapter, base_model)
    if inp.kind != "lora":
        raise ValueError(f"{adapter} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    key = _adapter_key(inp, dtype)
    target = Path(out) if out is not None else cache_dir() / "lora-merged" / f"{inp.path.name}-{key}"

    def build(tmp: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("merging LoRA adapter %s into %s", inp.path, inp.base)
        model = AutoModelForCausalLM.from_pretrained(
            inp.base, dtype=getattr(torch, dtype), use_safetensors=True
        )
        model = PeftModel.from_pretrained(model, inp.path).merge_and_unload()
        tok_src = inp.path if (inp.path / "tokenizer_config.json").is_file() else inp.base
        tok = AutoTokenizer.from_pretrained(tok_src)
        model.config.name_or_path = ""
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if (inp.base / PRUNE_FILE).is_file():
            shutil.copy2(inp.base / PRUNE_FILE, tmp / PRUNE_FILE)
        write_json_atomic(
            tmp / LORA_MERGE_FILE, {"key": key, "adapter": str(inp.path), "base": str(inp.base)}
        )

    return cached_artifact(target, build, LORA_MERGE_FILE, key=key).path


def _per_model(name: str, value: Any, n: int, default: float) -> list[float]:
    if value is None:
        return [default] * n
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values but there are {n} models to merge")
    return values


def build_mergekit_config(
    folders: list[Path],
    method: str,
    t: float = 0.5,
    densities: list[float] | None = None,
    weights: list[float] | None = None,
    base: Path | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """The mergekit YAML (as a dict) for SLERP (``base`` = the ``t=0`` end) or TIES over ``folders``."""
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": str(folders[0]),
            "models": [{"model": str(f)} for f in folders],
            "parameters": {"t": float(t)},
            "dtype": dtype,
        }
    assert base is not None
    models: list[dict[str, Any]] = [
        {"model": str(f), "parameters": {"density": d, "weight": w}}
        for f, d, w in zip(folders, densities or [], weights or [])
    ]
    return {
        "merge_method": "ties",
        "base_model": str(base),
        "models": models,
        "parameters": {"normalize": True},
        "dtype": dtype,
    }


def merge_models(
    models: list[str | os.PathLike],
    method: str = "slerp",
    out: str | os.PathLike = "merged",
    t: float = 0.5,
    densities: float | list[float] | None = None,
    weights: float | list[float] | None = None,
    base_model: str | os.PathLike | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Merge ``models`` (HF folders or LoRA adapters) with mergekit into ``out``; returns ``out``.

    ``method="slerp"``: exactly two models, interpolation ``t`` in [0, 1] (0 = the first model).
    ``method="ties"``: two or more fine-tunes of one base; ``densities`` (fraction of each task
    vector kept, default 0.5) and ``weights`` (default 1.0) are a number or one per model. The base
    is ``base_model`` or the adapters' common base. An adapter is applied to the base recorded in its
    ``adapter_config.json``; ``base_model`` stands in only when that one cannot be found. Layouts
    and ``out`` are checked before any weights load or mergekit runs. Output is atomic; a finished
    merge with identical settings is reused; any other non-empty ``out`` is refused unless
    ``overwrite``; a second run into the same ``out`` fails at once (``OutputPathError``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    models = list(models)
    if method == "slerp":
        if len(models) != 2:
            raise ValueError(f"slerp merges exactly 2 models, got {len(models)}")
        if not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must be a number in [0, 1], got {t!r}")
    elif len(models) < 2:
        raise ValueError(f"ties merges 2 or more models, got {len(models)}")
    n = len(models)
    dens = _per_model("densities", densities, n, 0.5) if method == "ties" else None
    wts = _per_model("weights", weights, n, 1.0) if method == "ties" else None
    if dens is not None and any(not 0.0 < d <= 1.0 for d in dens):
        raise ValueError(f"densities must be in (0, 1], got {dens}")

    inputs = [resolve_input(m, base_model) for m in models]
    named = [(f"{i.spec}" + (f" (LoRA on {i.base})" if i.kind == "lora" else ""), i.layout) for i in inputs]

    base_dir: Path | None = None
    if method == "ties":
        from .models import resolve_model

        if base_model is not None:
            base_dir = resolve_model(base_model)
        else:
            bases = {str(i.base.resolve()) for i in inputs if i.kind == "lora" and i.base is not None}
            if len(bases) != 1 or any(i.kind != "lora" for i in inputs):
                raise ValueError(
                    "ties needs the base model the inputs were fine-tuned from: pass base_model "
                    "(--base-model); it is inferred only when every input is a LoRA adapter of one base"
                )
            base_dir = Path(bases.pop())
        named.append((f"{base_dir} (base model)", model_layout(base_dir)))
    layout = check_layouts(named)

    out = Path(out)
    params = {"t": float(t)} if method == "slerp" else {"densities": dens, "weights": wts}
    record_key = stable_hash(
        {
            "method": method,
            "inputs": [
                {
                    "kind": i.kind,
                    "path": str(i.path.resolve()),
                    "content": fingerprint(i.path),
                    "base": fingerprint(i.base) if i.base else None,
                }
                for i in inputs
            ],
            "params": params,
            "base": fingerprint(base_dir) if base_dir else None,
            "dtype": dtype,
        }
    )
    same = out.is_dir() and is_complete(out, MERGE_FILE, key=record_key)  # reused below

    def build(tmp: Path) -> None:
        folders = [
            merge_adapter(i.path, base_model, dtype=dtype) if i.kind == "lora" else i.path for i in inputs
        ]
        config = build_mergekit_config(
            folders, method, t=t, densities=dens, weights=wts, base=base_dir, dtype=dtype
        )

        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        merge_config = MergeConfiguration.model_validate(config)
        yaml_text = merge_config.to_yaml() + "\n"
        run_merge(
            merge_config,
            str(tmp),
            MergeOptions(device="cpu", copy_tokenizer=True, write_model_card=False, safe_serialization=True),
            config_source=yaml_text,
        )
        write_text_atomic(tmp / "mergekit.yaml", yaml_text)
        if (folders[0] / PRUNE_FILE).is_file():
            shutil.copy2(folders[0] / PRUNE_FILE, tmp / PRUNE_FILE)
        record = {
            "key": record_key,
            "method": method,
            "inputs": [
                {
                    "spec": i.spec,
                    "kind": i.kind,
                    "path": str(i.path),
                    "base": str(i.base) if i.base else None,
                    "merged_folder": str(f),
                }
                for i, f in zip(inputs, folders)
            ],  # fmt: skip
            "base_model": str(base_dir) if base_dir else (str(folders[0]) if method == "slerp" else None),
            "params": params,
            "dtype": dtype,
            "layout": layout,
            "mergekit_config": "mergekit.yaml",
        }
        write_json_atomic(tmp / MERGE_FILE, record)
        write_text_atomic(tmp / "README.md", _card(record, yaml_text))

    # a non-empty --out without overwrite is refused, unless it is this very merge; a second run
    # into the same --out fails fast
    with claim_output(out, overwrite=overwrite or same) as out:
        reused = cached_artifact(out, build, MERGE_FILE, key=record_key, rebuild=overwrite).reused
    if reused:
        log.info("reusing merge in %s (same settings)", out)
    else:
        log.info("merged %d models with %s into %s", n, method, out)
    return out


def _card(record: dict[str, Any], yaml_text: str) -> str:
    lines = [
        f"# Merged model ({record['method'].upper()})",
        "",
        "Made by `sdd merge` (sdd-plugin) with mergekit. LoRA adapters were merged into their base "
        "weights with peft first.",
        "",
        "| input | kind | base |",
        "|---|---|---|",
    ]
    for inp in record["inputs"]:
        lines.append(
            f"| `{inp['spec']}` | {inp['kind']} | {('`' + inp['base'] + '`') if inp['base'] else '-'} |"
        )
    layout = record["layout"]
    lines += [
        "",
        f"Parameters: `{json.dumps(record['params'])}`, dtype {record['dtype']}.",
        f"Layout: {layout.get('model_type')} with {layout.get('num_hidden_layers')} blocks"
        + (
            f", pruned from `{layout['source_model']}` (removed blocks {layout['removed_blocks']})"
            if layout.get("removed_blocks")
            else ""
        )
        + ".",
        "",
        "mergekit configuration (`mergekit.yaml`; rerun with `mergekit-yaml mergekit.yaml OUT`):",
        "",
        "```yaml",
        yaml_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)

"""``sdd check recipe.yml``: check an Axolotl recipe before training.

Axolotl only *logs* a plugin that fails to import (training then silently runs as plain SFT) and
silently drops unknown keys. This command imports every ``plugins:`` entry, validates the
``sdd_*`` keys (misspellings get a did-you-mean), resolves the base model and the datasets, runs
axolotl's own config validation, and prints what the plugin would do. Exit code 1 on problems.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

HELP = "check an axolotl recipe: plugin imports, sdd_* keys, model, datasets, axolotl validation"

_CPU_SETTINGS = {
    "bf16": False,
    "fp16": False,
    "sample_packing": False,
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_embedding_kernel": False,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="axolotl recipe YAML")
    parser.add_argument("--no-axolotl", action="store_true", help="skip axolotl's own config validation")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def import_plugin(dotted: str) -> str | None:
    """Import ``module.Class`` the way axolotl does; return an error message or None."""
    if not isinstance(dotted, str) or "." not in dotted:
        return f"{dotted!r} is not a dotted path module.ClassName"
    module_name, class_name = dotted.rsplit(".", 1)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if module_name.startswith("axolotl.integrations.") or exc.name != module_name.split(".")[0]:
                raise
            module = importlib.import_module("axolotl.integrations." + module_name)
        getattr(module, class_name)
    except AttributeError:
        return f"{module_name} has no attribute {class_name!r}"
    except Exception as exc:  # any import-time failure makes axolotl skip the plugin
        return f"cannot import {dotted}: {type(exc).__name__}: {exc}"
    return None


def _axolotl_problems(raw: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """Run axolotl's validation on the recipe (with the plugins' keys merged in)."""
    try:
        from axolotl.integrations.base import PluginManager
        from axolotl.utils.dict import DictDefault

        from ..axolotl import _axolotl_validate
    except Exception as exc:
        return [f"axolotl is not importable here ({type(exc).__name__}: {exc}); install sdd-plugin[axolotl]"]
    cfg = DictDefault(json.loads(json.dumps(raw, default=str)))
    if plan.get("base_model_path"):
        cfg["base_model"] = plan["base_model_path"]
    for info in plan.get("datasets", []):
        if info.get("resolved"):
            cfg["datasets"][info["index"]]["path"] = info["resolved"]
    manager = PluginManager.get_instance()
    for name in raw.get("plugins") or []:
        if name not in manager.plugins:
            manager.register(name)
    try:
        _axolotl_validate(cfg)
    except Exception as exc:
        return [f"axolotl config validation: {type(exc).__name__}: {exc}"]
    return []


def check(path: str, axolotl: bool = True) -> dict[str, Any]:
    """Check a recipe; returns the plan plus ``plugins`` (name -> error or None) and ``problems``."""
    from ..axolotl.recipe import PLUGIN_PATH, load_recipe, plan

    raw = load_recipe(path)
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list):
        plugins = [plugins]
    imports = {str(name): import_plugin(name) for name in plugins}
    result = plan(raw)
    _mark_impossible_pruning(result)
    problems: list[str] = []
    for name, err in imports.items():
        if err:
            problems.append(
                f"plugins: {name} would not load, axolotl would skip it and train without it: {err}"
            )
    sdd_keys = [k for k in raw if str(k).lower().startswith(("sdd_", "sdd-"))]
    if PLUGIN_PATH not in imports:
        if sdd_keys:
            problems.append(
                f"plugins: {PLUGIN_PATH} is not listed, so axolotl would silently drop {', '.join(sdd_keys)}"
            )
        else:
            result["warnings"].append(f"{PLUGIN_PATH} is not in plugins: this recipe is plain axolotl SFT")
    problems.extend(result["problems"])
    if axolotl and not problems:
        problems.extend(_axolotl_problems(raw, result))
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        cuda = False
    if not cuda:
        for key, want in _CPU_SETTINGS.items():
            if key == "bf16" and raw.get(key) is True:
                continue  # CPU bf16 autocast: the plugin sets use_cpu
            if raw.get(key) is not want:
                hint = " (or true: bf16 autocast on CPU)" if key == "bf16" else ""
                result["warnings"].append(
                    f"no CUDA here: set {key}: {str(want).lower()}{hint} to train on CPU"
                )
        if raw.get("flash_attention"):
            result["warnings"].append(
                "no CUDA here: flash_attention needs a GPU (use attn_implementation: sdpa)"
            )
    result["plugins"] = imports
    result["problems"] = problems
    return result


def _mark_impossible_pruning(result: dict[str, Any]) -> None:
    """A pruning plan that does not fit the model says so instead of a block count below zero."""
    from ..axolotl.recipe import check_prune_range

    args, layers = result.get("args"), result.get("layers")
    if args is None or not args.sdd_prune or not layers or "prune" not in result or result.get("pre_pruned"):
        return
    try:
        check_prune_range(args, layers)
    except ValueError:
        what = str(result["prune"]).split("; blocks ")[0]
        result["prune"] = f"{what}: not possible, the model has {layers} blocks (see PROBLEM below)"


def _print(result: dict[str, Any], path: str) -> None:
    print(f"recipe      {path}")
    for name, err in result.get("plugins", {}).items():
        print(f"plugin      {name}: {'ok' if err is None else 'FAILS: ' + err}")
    if "base_model" in result:
        resolved = result.get("base_model_path")
        extra = f" -> {resolved}" if resolved and resolved != result["base_model"] else ""
        print(f"base model  {result['base_model']}{extra} ({result.get('layers') or '?'} blocks)")
    if "prune" in result:
        print(f"pruning     {result['prune']}")
    args = result.get("args")
    if args is not None:
        print(f"teacher     {result.get('teacher')}")
        if args.sdd_distill:
            tmpl = args.sdd_distill_template or "by format"
            print(
                f"distill     on: template {tmpl}, checker {args.sdd_distill_checker or 'by format'}, "
                f"max_new_tokens {args.sdd_distill_max_new_tokens}, batch {args.sdd_distill_batch_size}, "
                f"retries {args.sdd_distill_retries}, limit {args.sdd_distill_limit or 'all rows'}"
            )
        else:
            print("distill     off (SFT on the original responses)")
        if result.get("kd"):
            print(f"kd          {result['kd']}")
    for d in result.get("datasets", []):
        fmt = f" -> format {d['format']}" if d.get("format") else ""
        res = f" ({d['resolved']})" if d.get("resolved") else ""
        if d.get("pre_distilled"):
            fmt = f" -> distilled already, read as it is: {d['pre_distilled']}"
        print(f"dataset[{d['index']}]  {d['path']}{res} type {d['type']}{fmt}")
    for w in result.get("warnings", []):
        print(f"warning     {w}")
    for p in result.get("problems", []):
        print(f"PROBLEM     {p}")
    print(
        "OK: the recipe would run with the plugin."
        if not result.get("problems")
        else "FAILED: fix the problems above."
    )


def run(args: argparse.Namespace) -> int:
    result = check(args.recipe, axolotl=not args.no_axolotl)
    if args.json:
        out = dict(result)
        if out.get("args") is not None:
            out["args"] = out["args"].model_dump()
        json.dump(out, sys.stdout, indent=2, default=str)
        print()
    else:
        _print(result, args.recipe)
    return 1 if result["problems"] else 0

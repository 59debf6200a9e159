"""The plugin manager and the name -> implementation registries built from the hooks."""

from __future__ import annotations

import functools
import importlib
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import PROJECT_NAME

#: Built-in plugin modules. They are declared in the ``sdd_plugin`` entry-point group in
#: ``pyproject.toml`` like any third-party plugin; this list is only used when the package runs
#: from a source tree without installed metadata.
BUILTIN_MODULES = (
    "sdd_plugin.prune.metrics",
    "sdd_plugin.distill.templates",
    "sdd_plugin.distill.checkers",
    "sdd_plugin.generation.hf.backend",
    "sdd_plugin.generation.vllm_backend",
)

_KINDS = {
    "metric": "sdd_block_metrics",
    "template": "sdd_distill_templates",
    "checker": "sdd_answer_checkers",
    "backend": "sdd_generation_backends",
}


class UnknownPluginError(KeyError, ValueError):
    """An implementation name that no registered plugin provides."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager with built-ins and entry-point plugins loaded."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(PROJECT_NAME)
    for mod_name in BUILTIN_MODULES:
        mod = importlib.import_module(mod_name)
        if not pm.is_registered(mod):
            pm.register(mod, name=mod_name)
    return pm


def _collect(kind: str) -> dict[str, Any]:
    hook = getattr(get_plugin_manager().hook, _KINDS[kind])
    found: dict[str, Any] = {}
    for impls in hook():
        for impl in impls or []:
            if impl.name in found:
                raise ValueError(f"two plugins provide a {kind} named {impl.name!r}")
            found[impl.name] = impl
    return found


def available(kind: str) -> list[str]:
    """Names of every registered implementation of ``kind`` (metric/template/checker/backend)."""
    return sorted(_collect(kind))


def get(kind: str, name: str) -> Any:
    """Return the implementation of ``kind`` called ``name``, or raise a clear error."""
    found = _collect(kind)
    if name not in found:
        raise UnknownPluginError(f"unknown {kind} {name!r}; known: {', '.join(sorted(found)) or '(none)'}")
    return found[name]


def get_metric(name: str):
    """The block-importance metric called ``name``."""
    return get("metric", name)


def get_template(name: str):
    """The distillation template called ``name``."""
    return get("template", name)


def get_checker(name: str):
    """The answer checker called ``name``."""
    return get("checker", name)


def get_backend(name: str):
    """The teacher generation backend called ``name``."""
    return get("backend", name)

"""sdd-plugin: score and prune decoder blocks, self-data distill, fine-tune, merge, evaluate.

Public API (imported lazily so that ``import sdd_plugin`` stays cheap)::

    from sdd_plugin import hookimpl, get_plugin_manager, resolve_model
"""

from __future__ import annotations

from .hookspecs import hookimpl, hookspec
from .plugins import available, get_plugin_manager

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "resolve_model",
    "contiguous_argmin",
]


def __getattr__(name: str):
    if name in {"resolve_model", "load_model", "load_tokenizer", "DEFAULT_MODEL"}:
        from . import models

        return getattr(models, name)
    if name == "contiguous_argmin":
        from .prune.metrics import contiguous_argmin

        return contiguous_argmin
    raise AttributeError(name)

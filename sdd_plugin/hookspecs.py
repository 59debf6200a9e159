"""Hook specifications: the extension seam of sdd-plugin.

These docstrings are the contract. A plugin is any module or object with functions marked
``@sdd_plugin.hookimpl`` whose names match the hooks below. Plugins are discovered from the
``sdd_plugin`` entry-point group (the built-ins register the same way), or registered at run time
with ``get_plugin_manager().register(obj)``.

Every hook returns a list of named implementations; the registry in :mod:`sdd_plugin.plugins`
collects them, and users select one by ``name``. Two implementations with the same name are an
error, so a plugin cannot silently shadow a built-in.

Example, an outside metric::

    import sdd_plugin

    class MyMetric:
        name = "l2"
        description = "relative L2 change of the residual stream"
        default_tokens = "last"
        def pair_sums(self, states, mask): ...
        def select(self, table, n): return sdd_plugin.contiguous_argmin(table, n)

    @sdd_plugin.hookimpl
    def sdd_block_metrics():
        return [MyMetric()]

and in ``pyproject.toml``: ``[project.entry-points.sdd_plugin] my_metric = "my_pkg.metric"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .interfaces import AnswerChecker, BlockMetric, DistillTemplate, GenerationBackend

PROJECT_NAME = "sdd_plugin"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def sdd_block_metrics() -> list[BlockMetric]:
    """Return block-importance metrics (:class:`~sdd_plugin.interfaces.BlockMetric`).

    A metric turns the captured block inputs of one calibration batch into pairwise distance sums
    (one forward pass per batch serves every n), and picks which blocks to remove for a given n.
    Built-ins: ``angular`` (Gromov et al. 2403.17887), ``bi`` (ShortGPT Block Influence) and
    ``last`` (drop the n blocks before the final block).
    """


@hookspec
def sdd_distill_templates() -> list[DistillTemplate]:
    """Return distillation prompt templates (:class:`~sdd_plugin.interfaces.DistillTemplate`).

    A template renders an (instruction, reference answer) pair into the teacher's rewrite prompt.
    Built-ins: ``general`` and ``math`` (SDFT, Yang et al. 2402.13669).
    """


@hookspec
def sdd_answer_checkers() -> list[AnswerChecker]:
    """Return answer checkers (:class:`~sdd_plugin.interfaces.AnswerChecker`).

    A checker accepts a teacher rewrite or names why it falls back to the original response.
    Built-ins: ``general`` (rejects rewrites that talk about the prompt) and ``math`` (also
    requires the final answer to equal the reference's).
    """


@hookspec
def sdd_generation_backends() -> list[GenerationBackend]:
    """Return teacher generation backends (:class:`~sdd_plugin.interfaces.GenerationBackend`).

    A backend generates continuations of rendered prompts and reports each finished one through a
    callback, so that the caller can persist rows as they finish. Built-in: ``hf`` (batched
    transformers ``generate``).
    """

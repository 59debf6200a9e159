"""Axolotl plugin: prune the base model, self-distil the datasets, then let axolotl train as usual.

Enable it in a recipe with::

    plugins:
      - sdd_plugin.axolotl.SelfDistillationPlugin
    sdd_prune_num_blocks: 6

Flow (hooks in the order axolotl calls them):

1. ``register(cfg)`` (raw recipe, before axolotl validates it): rejects misspelled ``sdd_*`` keys
   and bad values, resolves embedded model names and ``sdd://`` data paths, runs axolotl's own
   validation once (so a bad recipe fails before any weights load), then prunes ``base_model``
   (or reuses the cached pruned checkpoint) and points ``base_model`` at it. The unpruned model
   is recorded (``PluginState.pruned_from``, cfg marker ``sdd_pruned_from``) and is the teacher
   unless ``sdd_teacher`` says otherwise.
   Because this happens in ``register``, every axolotl command that reads the recipe (``train``,
   ``preprocess``, ``merge-lora``, ``inference``) sees the pruned model as the base; when an
   adapter is loaded (``merge-lora``, ``lora_model_dir``) the pruned model it was trained on wins.
2. ``load_datasets(cfg)`` (train / preprocess, before tokenization): each ``datasets:`` entry is
   rewritten by the teacher into a content-hashed jsonl (reused when it exists) and the entry is
   pointed at it; axolotl then tokenizes and caches it like any local dataset.
   A ``base_model`` that ``sdd prune`` wrote and a dataset that ``sdd distill`` wrote are used as
   they are (:mod:`.prebuilt`): a multi-node job prunes and distils once, before the launch.
3. ``post_model_build``: checks the model axolotl built has the pruned number of blocks.
4. ``post_train_unload``: records the finished run in ``<output_dir>/sdd_run.json``.

The adapter only wires hooks to library calls: ``sdd_plugin.prune.prune``,
``sdd_plugin.distill.distill_dataset`` / ``convert_dataset`` (``sdd data convert`` is what an
``sdd://convert`` path does), ``sdd_plugin.checkpoints`` and ``sdd_plugin.cache.cached_artifact``.
"""

from __future__ import annotations

from typing import Any

from .args import SDDArgs, parse_sdd_args
from .recipe import PLUGIN_PATH

__all__ = ["MANIFEST", "PLUGIN_PATH", "SDDArgs", "SelfDistillationPlugin", "parse_sdd_args"]

#: Run manifest written into the recipe's ``output_dir``.
MANIFEST = "sdd_run.json"


def __getattr__(name: str) -> Any:
    # The plugin class needs axolotl; import it only when asked for (axolotl's load_plugin does
    # getattr(module, "SelfDistillationPlugin")), so the args and recipe helpers work without it.
    if name in ("SelfDistillationPlugin", "_axolotl_validate"):
        from . import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

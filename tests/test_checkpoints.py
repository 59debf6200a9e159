"""Which pruned checkpoint to use: the one an adapter was trained on, or the one a recipe made."""

from __future__ import annotations

import json

import pytest

from sdd_plugin.axolotl.args import parse_sdd_args
from sdd_plugin.axolotl.recipe import prepared_prune, prune_kwargs
from sdd_plugin.checkpoints import adapter_base, is_adapter, pruned_base
from sdd_plugin.prune import load_prune_result, prune, pruned_path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SDD_CACHE_DIR", str(root))
    return root


def _adapter(folder, base):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return folder


def test_pruned_base_of_an_adapter(tiny_models, tmp_path, cache):
    base = tiny_models("llama", 4)
    pruned = prune(base, num_blocks=1, start=2, num_samples=4, max_length=32)
    trained = _adapter(tmp_path / "on-pruned", pruned.out_dir)
    assert is_adapter(trained) and adapter_base(trained) == str(pruned.out_dir)
    found = pruned_base(trained)
    assert found is not None and found.out_dir == pruned.out_dir and found.removed_blocks == [2]
    assert found.extra["source_path"] == str(base) and found.reused
    assert pruned_base(_adapter(tmp_path / "on-base", base)) is None  # an unpruned base
    assert pruned_base(tmp_path) is None and adapter_base(tmp_path) is None  # not an adapter
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    assert adapter_base(tmp_path / "broken") is None


def test_a_recipe_recognises_the_checkpoint_it_pruned(tiny_models, cache):
    """A cfg that axolotl validated after register (ray workers register again) loses the plugin's
    marker key; the pruned base_model must be recognised, not pruned a second time."""
    base = tiny_models("llama", 4)
    args = parse_sdd_args({"sdd_prune_num_blocks": 1, "sdd_prune_calibration_limit": 4})
    result = prune(base, **prune_kwargs(args))
    assert pruned_path(base, **prune_kwargs(args)) == result.out_dir
    found = prepared_prune({"base_model": str(result.out_dir)}, args)
    assert found is not None and found.out_dir == result.out_dir
    assert load_prune_result(result.out_dir).removed_blocks == result.removed_blocks
    # the unpruned model, other settings, or pruning switched off: not prepared
    assert prepared_prune({"base_model": str(base)}, args) is None
    other = parse_sdd_args({"sdd_prune_num_blocks": 2, "sdd_prune_calibration_limit": 4})
    assert prepared_prune({"base_model": str(result.out_dir)}, other) is None
    off = parse_sdd_args({"sdd_prune": False})
    assert prepared_prune({"base_model": str(result.out_dir)}, off) is None
    assert prepared_prune({"base_model": "org/hub-model"}, args) is None

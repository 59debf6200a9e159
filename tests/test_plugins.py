"""The plugin manager: built-ins come through the entry-point group, outside plugins plug in."""

from __future__ import annotations

import pytest

import sdd_plugin
from sdd_plugin import plugins


def test_plugin_manager_loads_builtins_via_entry_points():
    pm = sdd_plugin.get_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    # registered under their entry-point names, exactly like a third-party plugin would be
    assert {"builtin_metrics", "builtin_templates", "builtin_checkers", "builtin_backends"} <= names


def test_unknown_name_lists_known_ones():
    with pytest.raises(plugins.UnknownPluginError) as err:
        plugins.get("metric", "no-such-metric")
    assert "no-such-metric" in str(err.value) and "angular" in str(err.value)


def test_outside_metric_registered_at_run_time_is_selectable_by_name(tiny_models):
    """A metric object registered at run time is selectable by name in score_blocks."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdd_plugin import contiguous_argmin, hookimpl
    from sdd_plugin.models import load_tokenizer
    from sdd_plugin.prune.scoring import score_blocks

    path = tiny_models("llama", 6)
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)
    texts = ["The quick brown fox jumps over the lazy dog.", "Bees tell each other where flowers are."]

    class L2:
        name = "test-l2"
        description = "relative L2 change"
        default_tokens = "last"

        def pair_sums(self, states, mask):
            x = states[:, :, 0]  # [L+1, B, H] (last-token mode)
            d = torch.cdist(x.transpose(0, 1), x.transpose(0, 1))  # [B, L+1, L+1]
            return (d / x.norm(dim=-1).T[:, :, None]).sum(0)

        def select(self, table, n):
            return contiguous_argmin(table, n)

    class Plugin:
        @hookimpl
        def sdd_block_metrics(self):
            return [L2()]

    plugin = Plugin()
    pm = plugins.get_plugin_manager()
    pm.register(plugin, name="test-l2-plugin")
    try:
        assert "test-l2" in plugins.available("metric")
        res = score_blocks(model, tok, texts, metric="test-l2", progress=False)
        assert res.metric == "test-l2" and len(res.removed(2)) == 2
        # the table holds the plugin's own distances, averaged over the texts: here the relative
        # change of the last token's state across block 0
        want = []
        for text in texts:
            with torch.no_grad():
                hs = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            x0, x1 = hs[0][0, -1].double(), hs[1][0, -1].double()
            want.append(float((x1 - x0).norm() / x0.norm()))
        assert float(res.table[0, 1]) == pytest.approx(sum(want) / len(want), rel=1e-4)
    finally:
        pm.unregister(plugin)
    assert "test-l2" not in plugins.available("metric")

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

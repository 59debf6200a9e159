"""lm-eval task YAMLs of the sdd_* tasks (rendered at run time by sdd_plugin.evaluate.local_data)."""

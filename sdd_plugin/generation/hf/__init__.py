"""The ``hf`` backend: a transformers model driven by a batched, resumable decode engine."""

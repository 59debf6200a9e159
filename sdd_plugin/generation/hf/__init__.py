"""The ``hf`` backend: a transformers model driven by a batched, resumable decode engine.

- :mod:`.backend` -- the ``hf`` GenerationBackend (batching, loading, results);
- :mod:`.decoding` -- the decode loop, :func:`decode_batch`;
- :mod:`.prefill` -- padding-free prefill into the preallocated cache, shared prefix once;
- :mod:`.kv_cache` -- the preallocated KV cache layer and when to compact a batch;
- :mod:`.attention` -- GQA-aware SDPA (``sdd_gqa_sdpa``) reading each row's own cache columns;
- :mod:`.kernel` -- the C decode attention kernel (``csrc/``), built and checked on first use;
- :mod:`.lean_step` -- a decode step without transformers' per-call plumbing (Llama family);
- :mod:`.cpu_linears` -- oneDNN GEMMs with fused sibling projections on CPU fp32;
- :mod:`.prompt_lookup` -- prompt-lookup drafts for the last rows of a batch;
- :mod:`.sampling` -- greedy or warped sampling of the next token;
- :mod:`.top_logprobs` -- the top-k log-probabilities of each generated token, when asked for.
"""

from .attention import register_gqa_attention
from .backend import HF_BACKEND, HFBackend
from .decoding import decode_batch
from .kernel import DecodeAttention, decode_attention_kernel
from .lean_step import LeanDecodeStep
from .prefill import common_prefix_length
from .top_logprobs import TopLogprobs

__all__ = [
    "HF_BACKEND",
    "DecodeAttention",
    "HFBackend",
    "LeanDecodeStep",
    "TopLogprobs",
    "common_prefix_length",
    "decode_attention_kernel",
    "decode_batch",
    "register_gqa_attention",
]

"""The ``hf`` backend's decode engine: padding-free prefill, a preallocated KV cache, GQA-aware
decode attention, and rows that leave the batch when they finish.

:func:`decode_batch` is a plain greedy/sampling loop over ``model(...)`` calls; everything
model-specific stays in transformers (the model, its masks, its cache API). What it changes
against ``model.generate`` on CPU, measured on the default model (``benchmarks/distill_throughput.py``):

- **Prefill without padding.** A length-sorted batch is prefilled in small groups of similar
  length and copied right-aligned into the batch cache, so a 435-token prompt does not make 31
  shorter ones pay for 435 positions.
- **No cache copies per token.** ``PreallocatedLayer`` writes each new key/value into a
  buffer sized for prompt + ``max_new_tokens``; transformers' ``DynamicLayer`` concatenates the
  whole cache at every step (half of the decode time in a profile).
- **Attention without the padding columns.** Decode attention is bound by reading the KV cache,
  and a length-sorted batch is left-padded to its longest prompt (~35 % of the columns of a
  64-row GSM8K batch). Each decode step passes ``sdd_first_columns`` (every row's first real
  column): on CPU fp32 a small C kernel (:mod:`sdd_plugin.generation.hf.kernel`) reads exactly each row's
  columns once, ~1.8x the speed of SDPA on 2 AVX2 cores. Without the kernel, ``sdd_row_groups``
  (runs of ~8 neighbouring rows and the first column any of them uses) slices the cache for SDPA.
- **GQA without ``repeat_kv``** (below).
- **oneDNN linears** on CPU fp32 (:class:`_CpuLinears`): weights reordered once, q/k/v and
  gate/up fused; on 2 AVX2 cores a step's GEMMs take ~30 % less time than MKL ``F.linear``.
- **Finished rows leave the batch** (compacted in place once a sixteenth of the slots are
  done), instead of being computed until the longest row ends.

GQA-aware SDPA for single-token decode steps (registered as ``sdd_gqa_sdpa``):
transformers' ``sdpa`` attention expands the key/value heads of a grouped-query model to the
number of query heads (``repeat_kv``) before every call, unless it can pass ``enable_gqa`` (CUDA
without a mask). On CPU, with a padding mask, that means copying the whole KV cache ``G`` times
at every generated token. For a decode step (one query per row) the expansion is unnecessary: the
``G`` query heads that share a key/value head are stacked as ``G`` queries against that head, so
attention runs on the cache as it is. The result is the same computation (scores, softmax and
weighted sum per query head); only the summation order inside the kernel may differ.

Prefill (several queries per row) and models without grouped heads go to the stock ``sdpa``
function unchanged. The mask is built by transformers' own ``sdpa_mask``.
"""

from __future__ import annotations

import functools
import weakref

ATTENTION_NAME = "sdd_gqa_sdpa"
#: up to this many queries per row (decode steps, prompt-lookup verification) take the GQA path;
#: longer ones (prefill) go to the stock ``sdpa`` function
MAX_GQA_QUERIES = 16
#: rows per attention call in a decode step (:func:`row_groups`): each call reads the KV cache
#: from the first column its rows use (8 measured best at 64 rows, 600 columns, 2 AVX2 cores)
ATTENTION_ROWS_PER_CALL = 8
#: the engine runs a CPU fp32 model's linear layers through oneDNN (:class:`_CpuLinears`) only up to
#: this many bytes of parameters: fused and reordered weights are a second copy of them
CPU_LINEARS_MAX_BYTES = 4 * 2**30
#: the row count oneDNN lays the reordered weights out for (a full decode batch); any count works
PACKED_GEMM_ROWS = 64
#: prompt lookup verifies at most about this many tokens per step: each running row gets
#: ``min(k, LOOKUP_TOKENS_PER_STEP // rows - 1)`` drafts, so a full batch decodes plainly and the
#: few rows left at the end (often in a repetition loop, which lookup drafts exactly) verify up to
#: ``k`` at once. A step's cost grows with its tokens: on 2 AVX2 cores, 64 rows x 1 token ~470 ms,
#: 20 rows x 1 ~220 ms, 20 rows x 5 ~530 ms. 96 (lookup from 48 rows on, one draft a row there)
#: decoded the 64-prompt benchmark ~5 % faster than 64 or 128 in paired runs (session 7).
LOOKUP_TOKENS_PER_STEP = 96
_registered = False


def row_groups(first_columns: list[int], rows_per_call: int = ATTENTION_ROWS_PER_CALL) -> list[tuple]:
    """``(start, stop, column)`` runs of neighbouring batch rows and the first cache column any
    row of the run attends (rows are sorted by length, so a run's rows start at similar columns)."""
    n, size = len(first_columns), max(1, rows_per_call)
    return [(a, min(a + size, n), min(first_columns[a : a + size])) for a in range(0, n, size)]


def gqa_sdpa_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sdd_row_groups=None,
    sdd_first_columns=None,
    sdd_stop_columns=None,
    **kwargs,
):
    """``sdpa`` attention with key/value heads left unexpanded when there are few queries per row.

    Shapes as transformers passes them: ``query`` ``[B, H, Q, D]``, ``key``/``value``
    ``[B, KVH, L, D]``, ``attention_mask`` ``[B, 1, Q, L]`` (bool) or None. Returns
    ``([B, Q, H, D], None)`` like the stock function. ``sdd_row_groups`` (from
    :func:`row_groups`, passed through the model's kwargs) splits the batch into runs of rows
    that each read the cache from their run's first column: every column left of it is masked
    for all rows of the run, so the result is the same with less of the cache read.
    ``sdd_first_columns`` (a ``[B]`` long tensor) is the caller's promise that query ``i`` of row
    ``b`` attends exactly the columns ``[first_columns[b], stop_columns[b] + i)``
    (``sdd_stop_columns``, default ``L - Q + 1``): the call then runs the C kernel of
    :mod:`sdd_plugin.generation.hf.kernel` (the mask unused) when it is available.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, heads, kv_heads = query.shape[2], query.shape[1], key.shape[1]
    causal_without_mask = q_len > 1 and attention_mask is None  # the stock path sets is_causal
    if q_len > MAX_GQA_QUERIES or causal_without_mask or (dropout and module.training):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if sdd_first_columns is not None and not (dropout and module.training):
        from .kernel import DecodeAttention, decode_attention_kernel

        kernel = decode_attention_kernel()
        if kernel is not None and DecodeAttention.supports(query, key, value):
            out = kernel(query, key, value, sdd_first_columns, scaling, stop_columns=sdd_stop_columns)
            return out.transpose(1, 2), None
    if sdd_row_groups and (len(sdd_row_groups) > 1 or sdd_row_groups[0][2] > 0):
        mask = _additive_mask(attention_mask, query.dtype)
        mask = None if mask is None else mask[:, :, -q_len:, : key.shape[2]]
        outs = [
            _gqa_sdpa(
                query[a:b],
                key[a:b, :, c:],
                value[a:b, :, c:],
                None if mask is None else mask[a:b, :, :, c:],
                scaling,
            )
            for a, b, c in sdd_row_groups
        ]
        return torch.cat(outs, dim=0), None
    if kv_heads == heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return _gqa_sdpa(query, key, value, attention_mask, scaling), None


_ADDITIVE_MASK: list = [None, None]  # [bool mask it was made from, additive mask]


def _additive_mask(mask, dtype):
    """``mask`` (bool) as an additive 0/-inf mask, made once per model call: every layer gets the
    same mask object, and SDPA would otherwise convert it in each of its calls."""
    import torch

    if mask is None or mask.dtype != torch.bool:
        return mask
    source, additive = _ADDITIVE_MASK
    if source is not mask or additive.dtype != dtype:
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        _ADDITIVE_MASK[:] = [mask, additive]
    return additive


def _gqa_sdpa(query, key, value, attention_mask, scaling):
    """SDPA of ``[B, H, Q, D]`` queries on ``[B, KVH, L, D]`` keys/values (``KVH`` divides ``H``)
    without expanding the key/value heads; ``attention_mask`` ``[B, 1, >=Q, >=L]`` bool or None.
    Returns ``[B, Q, H, D]``."""
    import torch.nn.functional as F

    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # query head h uses key/value head h // group (repeat_kv's layout): fold the group into the
    # query axis, [B, KVH, G * Q, D], query row g * Q + j = head (kvh, g), position j
    q = query.reshape(batch, kv_heads, group * q_len, head_dim)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, -q_len:, : key.shape[2]]  # [B, 1, Q, L]
        if q_len > 1:  # the same Q mask rows for every head of the group
            mask = mask.unsqueeze(2).expand(-1, -1, group, -1, -1).reshape(batch, 1, group * q_len, -1)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()


def register_gqa_attention() -> str:
    """Register ``sdd_gqa_sdpa`` (attention and mask) with transformers once; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, gqa_sdpa_attention_forward)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True
    return ATTENTION_NAME


def _preallocated_layer_class():
    """:class:`PreallocatedLayer`, defined lazily so importing this module does not import torch."""
    global PreallocatedLayer
    if PreallocatedLayer is not None:
        return PreallocatedLayer
    from transformers.cache_utils import DynamicLayer

    class _PreallocatedLayer(DynamicLayer):
        """A full-attention KV cache layer with a fixed capacity, written in place.

        A transformers ``DynamicLayer`` (the models and mask builders treat it as one) that keeps
        ``[B, KVH, capacity, D]`` buffers; ``keys``/``values`` are views of the filled part, so
        appending a token costs one slice write instead of concatenating the whole cache.
        """

        def __init__(self, key_buffer, value_buffer, length: int, shared_columns: int = 0) -> None:
            """Wrap ``[B, KVH, capacity, D]`` buffers whose first ``length`` positions are filled
            (every row's first ``shared_columns`` real columns equal to every other row's)."""
            super().__init__()
            if length > key_buffer.shape[2]:
                raise ValueError(f"capacity {key_buffer.shape[2]} < prefilled length {length}")
            self.dtype, self.device = key_buffer.dtype, key_buffer.device
            self._k, self._v = key_buffer, value_buffer
            self._len = length
            self.write_columns = None  # [B, T] per-row target columns of the next update
            # every row's first real columns hold the same keys/values for this many columns (the
            # prompts' shared prefix): the decode kernel may read them from one row for all
            self.shared_columns = shared_columns
            self.is_initialized = True
            self._views()

        def _views(self) -> None:
            self.keys = self._k[:, :, : self._len]
            self.values = self._v[:, :, : self._len]

        def lazy_initialization(self, key_states, value_states) -> None:  # already initialized
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            """Append ``[B, KVH, T, D]`` states in place; return the filled views.

            With ``write_columns`` set (``[B, T]``, prompt lookup), row ``b`` writes its ``T``
            states at its own columns instead, and the views extend to the largest column."""
            if self.write_columns is not None:
                cols = self.write_columns
                rows = torch_arange_like(cols)
                self._k[rows, :, cols] = key_states.transpose(1, 2)
                self._v[rows, :, cols] = value_states.transpose(1, 2)
                self._len = int(cols.max()) + 1
                self._views()
                return self.keys, self.values
            new = key_states.shape[-2]
            if self._len + new > self._k.shape[2]:
                raise RuntimeError(f"KV cache capacity {self._k.shape[2]} exceeded")
            self._k[:, :, self._len : self._len + new] = key_states
            self._v[:, :, self._len : self._len + new] = value_states
            self._len += new
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._len

        def get_max_length(self) -> int:
            return self._k.shape[2]

        def crop(self, tokens_to_remove: int) -> None:
            self._len = max(0, self._len - abs(tokens_to_remove)) if tokens_to_remove else self._len
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

        def batch_select_indices(self, indices) -> None:
            """Keep only the batch rows ``indices``. Increasing indices (dropping finished rows)
            move in place: each kept row's filled columns go to its new slot, lowest first, so
            no row is overwritten before it moved, and the buffers become views of their first
            rows (no new allocation). Anything else copies the buffers once."""
            keep = indices.tolist()
            if any(b <= a for a, b in zip(keep, keep[1:])) or (keep and keep[-1] >= self._k.shape[0]):
                self._k = self._k.index_select(0, indices)
                self._v = self._v.index_select(0, indices)
            else:
                filled = self._len
                for slot, row in enumerate(keep):
                    if slot != row:
                        self._k[slot, :, :filled].copy_(self._k[row, :, :filled])
                        self._v[slot, :, :filled].copy_(self._v[row, :, :filled])
                self._k, self._v = self._k[: len(keep)], self._v[: len(keep)]
            self.write_columns = None
            self._views()

        def reorder_cache(self, beam_idx) -> None:
            self.batch_select_indices(beam_idx)

        def reset(self) -> None:
            self._len = 0
            self.shared_columns = 0
            self._views()

    PreallocatedLayer = _PreallocatedLayer
    return PreallocatedLayer


#: set by :func:`_preallocated_layer_class` on first use
PreallocatedLayer = None


def torch_arange_like(cols):
    """``[[0], [1], ..., [B-1]]`` on the device of ``cols`` (row index for per-row column writes)."""
    import torch

    return torch.arange(cols.shape[0], device=cols.device)[:, None]


def _full_attention_only(config) -> bool:
    """True when every decoder layer is plain full attention (no sliding window, no linear layers)."""
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None)
    if types:
        return all(t == "full_attention" for t in types)
    return not getattr(text, "sliding_window", None) or not getattr(text, "use_sliding_window", True)


def common_prefix_length(input_ids, lengths) -> int:
    """Tokens every row of a left-padded batch starts with, leaving each row at least one more."""
    rows, width = input_ids.shape
    starts = [width - int(n) for n in lengths]
    limit = int(lengths.min()) - 1
    first = input_ids[0, starts[0] : starts[0] + limit]
    for i in range(1, rows):
        differs = (input_ids[i, starts[i] : starts[i] + limit] != first[:limit]).nonzero()
        if differs.numel():
            limit = int(differs[0])
        if limit <= 0:
            return 0
    return max(limit, 0)


def _prefill(model, input_ids, attention_mask, capacity: int, group: int, min_shared: int = 8):
    """Prefill a left-padded, length-sorted batch into preallocated per-layer buffers.

    The prefix that every prompt shares (system prompt and template header: 25 % of a math
    distillation prompt) is computed once and referenced by every row. The rest of each prompt is
    prefilled in groups of ``group`` rows of similar length, right-aligned, so no row pays for
    the padding of the batch's longest one. Returns ``(cache, mask, last_logits)``: each row's
    layout is that of its left-padded prompt (``[padding | shared prefix | own suffix]``), and
    ``mask`` is ``attention_mask``, so a row's real positions are one contiguous run.
    """
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    rows, width = input_ids.shape
    lengths = attention_mask.sum(-1)
    shared = common_prefix_length(input_ids, lengths) if rows > 1 else 0
    if shared < min_shared:
        shared = 0
    prefix_kv = []
    if shared:
        start = width - int(lengths[0])
        prefix_cache = DynamicCache(config=model.config)
        model(
            input_ids=input_ids[:1, start : start + shared],
            position_ids=torch.arange(shared, device=input_ids.device)[None],
            past_key_values=prefix_cache,
            use_cache=True,
            logits_to_keep=1,
        )
        prefix_kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
    suffix_len = lengths - shared
    cols = torch.arange(width, device=input_ids.device)
    mask = (cols[None] >= width - suffix_len[:, None]).to(attention_mask.dtype)  # suffix columns

    buffers: list[tuple] = []
    logits = []
    for start in range(0, rows, group):
        stop = min(start + group, rows)
        n = stop - start
        sub_width = int(suffix_len[start:stop].max())
        ids = input_ids[start:stop, width - sub_width :]
        sub_mask = mask[start:stop, width - sub_width :]
        positions = shared + (sub_mask.cumsum(-1) - 1).clamp(min=0)
        if shared:
            cache = DynamicCache(
                [
                    (k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous())
                    for k, v in prefix_kv
                ],
                config=model.config,
            )
            call_mask = torch.cat([sub_mask.new_ones((n, shared)), sub_mask], dim=1)
        else:
            cache = DynamicCache(config=model.config)
            call_mask = sub_mask
        out = model(
            input_ids=ids,
            attention_mask=call_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits.append(out.logits[:, -1, :])
        for layer_idx, layer in enumerate(cache.layers):
            if len(buffers) <= layer_idx:  # first group: allocate the batch's buffers
                kv_heads, head_dim = layer.keys.shape[1], layer.keys.shape[3]
                buf_k = layer.keys.new_zeros((rows, kv_heads, capacity, head_dim))
                buffers.append((buf_k, torch.zeros_like(buf_k)))
            buf_k, buf_v = buffers[layer_idx]
            buf_k[start:stop, :, width - sub_width : width] = layer.keys[:, :, shared:]
            buf_v[start:stop, :, width - sub_width : width] = layer.values[:, :, shared:]
    layer_cls = _preallocated_layer_class()
    layers = []
    starts = (width - lengths).tolist()  # each row's shared prefix goes just left of its suffix
    for layer_idx, (buf_k, buf_v) in enumerate(buffers):
        if shared:  # after the suffix blocks: overwrites padding columns of shorter rows only
            for row, start in enumerate(starts):
                buf_k[row, :, start : start + shared] = prefix_kv[layer_idx][0][0]
                buf_v[row, :, start : start + shared] = prefix_kv[layer_idx][1][0]
        layers.append(layer_cls(buf_k, buf_v, width, shared_columns=shared))
    return Cache(layers=layers), attention_mask, torch.cat(logits, dim=0)


class _CpuLinears:
    """Run a CPU fp32 model's ``nn.Linear`` layers as oneDNN GEMMs, siblings fused, while decoding.

    A decode step multiplies few rows by every weight of the model, and on CPU the step is bound
    by how the GEMM library streams those weights. Measured on 2 AVX2 cores (30 blocks of the
    default model, cold weights): MKL (``F.linear``) takes 228 ms at 64 rows and 70 ms at 1 row;
    oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's CPU freezing
    pass uses) with the query/key/value projections as one GEMM and gate/up as one takes 166 and
    42 ms. The output head (49,152 x 576) takes 34 ms against MKL's 87 at 64 rows.

    Siblings (``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` of one parent, same
    input size) get their weights concatenated once; the first sibling called computes all of
    them and hands the others their slice when they are called with the same input tensor (the
    Llama-family call order); any other input falls back to the sibling's own GEMM. Only the
    modules' ``forward`` attributes are replaced, and they are restored on exit; the model's
    parameters are untouched. The result is the same products and sums as ``F.linear``; only the
    GEMM's blocking (summation order) differs.
    """

    SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

    def __init__(self, model) -> None:
        import torch

        self.modules: list = []
        self.model = None
        self.op = _onednn_linear()
        params = list(model.parameters())
        if self.op is None or not params:
            return
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
            return
        if sum(p.numel() * p.element_size() for p in params) > CPU_LINEARS_MAX_BYTES:
            return  # the fused/packed weights are a second copy: only for models this small
        self.model = model

    def _linear(self, x, weight, bias):
        return self.op(x, weight, bias, "none", [], "")

    def _groups(self) -> list[tuple]:
        """``(modules, weight, bias)`` per GEMM: sibling runs fused, other linears alone, with
        oneDNN-layout weights. Made once per model and reused while its linear weights are the
        same tensors, unmodified (same storage and version counter)."""
        import torch

        linears = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        signature = tuple((m.weight.data_ptr(), m.weight._version) for m in linears)
        cached = _CPU_LINEAR_GROUPS.get(self.model)
        if cached is not None and cached[0] == signature:
            return cached[1]
        pack = _onednn_reorder()
        prepare = (lambda w: w) if pack is None else (lambda w: pack(w, PACKED_GEMM_ROWS))
        runs, fused = [], set()
        for parent in self.model.modules():
            for names in self.SIBLINGS:
                mods = [getattr(parent, n, None) for n in names]
                if not all(isinstance(m, torch.nn.Linear) for m in mods):
                    continue
                if len({m.in_features for m in mods}) != 1 or len({m.bias is None for m in mods}) != 1:
                    continue
                runs.append(mods)
                fused.update(id(m) for m in mods)
        runs += [[m] for m in linears if id(m) not in fused]
        groups = []
        for mods in runs:
            if len(mods) == 1:  # no copy unless oneDNN lays it out anew
                weight, bias = mods[0].weight.detach(), mods[0].bias
            else:
                weight = torch.cat([m.weight.detach() for m in mods])
                bias = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
            groups.append((mods, prepare(weight), bias))
        _CPU_LINEAR_GROUPS[self.model] = (signature, groups)
        return groups

    def __enter__(self):
        if self.model is None:
            return self
        for mods, weight, bias in self._groups():
            if len(mods) == 1:
                mods[0].forward = lambda x, w=weight, b=bias: self._linear(x, w, b)
            else:
                self._fuse(mods, weight, bias)
            self.modules.extend(mods)
        return self

    def _fuse(self, mods, weight, bias) -> None:
        """The first sibling computes the fused GEMM; the others return their slice of it."""
        sizes = [m.out_features for m in mods]
        state: dict = {}

        def first(x):
            parts = self._linear(x, weight, bias).split(sizes, dim=-1)
            state["x"], state["parts"] = x, parts
            return parts[0]

        def sibling(i, own):
            def forward(x):
                if state.get("x") is x:
                    out = state["parts"][i]
                    if i == len(mods) - 1:
                        state.clear()
                    return out
                return self._linear(x, own.weight, own.bias)

            return forward

        mods[0].forward = first
        for i, m in enumerate(mods[1:], start=1):
            m.forward = sibling(i, m)

    def __exit__(self, *exc) -> None:
        for module in self.modules:
            del module.forward  # back to the class's forward
        self.modules = []


#: model -> (signature of its linear weights, :meth:`_CpuLinears._groups`)
_CPU_LINEAR_GROUPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _onednn_linear():
    """oneDNN's linear op (internal, inductor's) if it exists and agrees with ``F.linear``."""
    import torch

    try:
        op = torch.ops.mkldnn._linear_pointwise
        x = torch.arange(24.0).reshape(3, 8).sin()  # no draw from the global RNG
        w, b = torch.arange(40.0).reshape(5, 8).cos(), torch.arange(5.0)
        ok = torch.backends.mkldnn.is_available() and torch.allclose(
            op(x, w, b, "none", [], ""), torch.nn.functional.linear(x, w, b), atol=1e-5
        )
    except (AttributeError, RuntimeError, TypeError):
        return None
    return op if ok else None


def _onednn_reorder():
    """oneDNN's weight reorder op (weights laid out once for its GEMM), or None."""
    import torch

    try:
        return torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return None


def _on_row_columns(model, first_cols) -> bool:
    """Whether decode steps may read each row's cache from its first real column: the
    preallocated cache (``first_cols`` known) and ``sdd_gqa_sdpa`` attention."""
    return first_cols is not None and getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME


def _group_kwargs(model, first_cols, stop_columns=None) -> dict:
    """``sdd_row_groups`` and ``sdd_first_columns`` (with ``sdd_stop_columns`` when given) for a
    model call when the model runs ``sdd_gqa_sdpa`` attention: each row attends every column from
    its first real one on, up to its new tokens."""
    import torch

    if not _on_row_columns(model, first_cols):
        return {}
    kwargs = {
        "sdd_row_groups": row_groups(first_cols),
        "sdd_first_columns": torch.tensor(first_cols, dtype=torch.long),
    }
    if stop_columns is not None:
        kwargs["sdd_stop_columns"] = stop_columns
    return kwargs


def _lean_step(model, first_cols):
    """:class:`~sdd_plugin.generation.hf.lean_step.LeanDecodeStep` for a model decoding on the preallocated
    cache with ``sdd_gqa_sdpa`` attention, else None (the stock forward)."""
    if not _on_row_columns(model, first_cols):
        return None
    from .lean_step import LeanDecodeStep

    return LeanDecodeStep.for_model(model)


def _next_tokens(logits, warpers, do_sample: bool, generator):
    """``[B]`` next tokens from ``[B, V]`` logits: argmax, or a draw from the warped softmax."""
    import torch

    logits = logits.float()
    if do_sample:
        probs = torch.softmax(warpers(None, logits), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits.argmax(dim=-1)


def _compact_now(dead: int, slots: int) -> bool:
    """Drop finished rows from the batch once a sixteenth of its slots are done (or <= 2 run).
    A finished row still costs its share of every step (~6 ms of a 64-row step of the default
    model) until it is dropped, and dropping moves the kept rows' filled cache columns (~50 ms
    at 64 rows), so finished rows are dropped a few at a time."""
    return dead > 0 and (dead >= max(1, slots // 16) or slots - dead <= 2)


class _NgramIndex:
    """Prompt lookup drafts for one row: the tokens that followed the latest earlier occurrence of
    the row's last bigram (else its last token) in prompt + generated text."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self.bigram: dict[tuple[int, int], int] = {}
        self.unigram: dict[int, int] = {}
        self.extend(tokens)

    def extend(self, new: list[int]) -> None:
        """Append tokens; index every n-gram that now has a continuation."""
        toks = self.tokens
        for t in new:
            i = len(toks)  # index of t: the continuation of the n-grams ending at i - 1
            if i >= 1:
                self.unigram[toks[i - 1]] = i
            if i >= 2:
                self.bigram[(toks[i - 2], toks[i - 1])] = i
            toks.append(t)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` proposed next tokens (empty when nothing matches)."""
        toks = self.tokens
        at = self.bigram.get((toks[-2], toks[-1])) if len(toks) >= 2 else None
        if at is None:
            at = self.unigram.get(toks[-1]) if toks else None
        return [] if at is None else toks[at : at + k]


def _decode_prompt_lookup(
    model,
    cache,
    layout_mask,
    first_logits,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos,
    draft_tokens: int,
    warpers,
    do_sample: bool,
    generator,
    lean=None,
) -> list[list[int]]:
    """Decode with prompt lookup (Saxena 2023; ``prompt_lookup_num_tokens`` in transformers).

    Each step feeds every row its last token plus ``draft_tokens`` proposed by :class:`_NgramIndex`
    and verifies them in one forward pass: greedy keeps the drafts up to the first that differs
    from the argmax (plus the argmax there), so the tokens are those of one-token-at-a-time greedy
    decoding; sampling accepts draft ``d`` with probability ``p(d)`` and otherwise samples from
    ``p`` with ``d`` removed (speculative sampling with a point-mass draft), so every token is
    still drawn from the model's distribution. Rows accept different counts, so each row writes its
    keys/values at its own cache columns and gets its own 4D mask. Rewrites copy much of the
    reference answer in their prompt: ~2 tokens a row per step on GSM8K, about half the steps.
    """
    import torch

    device = layout_mask.device
    rows, width = layout_mask.shape
    k = draft_tokens
    capacity = cache.layers[0].get_max_length()
    # columns < col[b] that row b attends: its prompt layout, then everything it generated
    valid = torch.ones((rows, capacity), dtype=torch.bool, device=device)
    valid[:, :width] = layout_mask.bool()
    col = torch.full((rows,), width, dtype=torch.long, device=device)  # next write column
    pos = layout_mask.sum(-1)  # next position id
    first_cols = (width - pos).tolist()  # each slot's first real column (left padding before it)
    out_tokens: list[list[int]] = [[] for _ in range(rows)]
    eos_set = {int(t) for t in eos.tolist()}

    first = _next_tokens(first_logits, warpers, do_sample, generator).tolist()
    alive = list(range(rows))  # original row of each batch slot
    running = []  # slot still generating (finished slots idle until the next compaction)
    index = []
    last = []
    for r in range(rows):
        out_tokens[r].append(first[r])
        running.append(first[r] not in eos_set and max_new_tokens > 1)
        index.append(_NgramIndex(prompts[r] + [first[r]]))
        last.append(first[r])
    while True:
        live = sum(running)
        if live == 0:
            break
        n = len(alive)
        if _compact_now(n - live, n):
            keep_slots = [i for i in range(n) if running[i]]
            keep = torch.tensor(keep_slots, dtype=torch.long, device=device)
            cache.batch_select_indices(keep)
            valid, col, pos = valid[keep], col[keep], pos[keep]
            alive, index, last, first_cols = (
                [xs[i] for i in keep_slots] for xs in (alive, index, last, first_cols)
            )
            running = [True] * len(keep_slots)
            n = len(alive)
        # fewer drafts while many rows run: verifying k tokens costs more than it saves there
        budget = min(k, max(0, LOOKUP_TOKENS_PER_STEP // live - 1))
        drafts = [idx.draft(budget) if run else [] for idx, run in zip(index, running)]
        width_q = 1 + max(len(d) for d in drafts)
        kk = width_q - 1
        inp = torch.tensor(
            [[t, *d, *([t] * (kk - len(d)))] for t, d in zip(last, drafts)], dtype=torch.long, device=device
        )  # filler after short drafts: verified like any draft
        offsets = torch.arange(width_q, device=device)
        write = col[:, None] + offsets  # [n, q]
        for layer in cache.layers:
            layer.write_columns = write
        try:
            # row b's query i attends [first column, col[b] + i]: its layout, what it kept, and
            # its new tokens up to i (rejected drafts' columns are rewritten before any read)
            if lean is not None and lean.fits(width_q):
                first = torch.tensor(first_cols, dtype=torch.long)
                logits = lean(inp, pos[:, None] + offsets, cache, first, stop_columns=col + 1).float()
            else:
                span = int(write.max()) + 1
                cols = torch.arange(span, device=device)
                old = valid[:, :span] & (cols[None] < col[:, None])  # [n, span]
                new = (cols[None, None] >= col[:, None, None]) & (cols[None, None] <= write[:, :, None])
                logits = model(
                    input_ids=inp,
                    attention_mask=(old[:, None, :] | new)[:, None],  # [n, 1, q, span]
                    position_ids=pos[:, None] + offsets,
                    past_key_values=cache,
                    use_cache=True,
                    **_group_kwargs(model, first_cols, stop_columns=col + 1),
                ).logits.float()
        finally:
            for layer in cache.layers:
                layer.write_columns = None
        draft_t = inp[:, 1:]
        rows_idx = torch.arange(n, device=device)
        if do_sample:
            probs = torch.softmax(warpers(None, logits.reshape(n * width_q, -1)), dim=-1).reshape(
                n, width_q, -1
            )
            p_draft = probs[:, :kk].gather(2, draft_t[:, :, None]).squeeze(2)  # [n, kk]
            u = torch.rand((n, kk), generator=generator, device=device)
            accepted = (u < p_draft).long().cumprod(1).sum(1)  # [n]
            residual = probs[rows_idx, accepted]  # p at the first rejection (or the bonus position)
            rej = (accepted < kk).nonzero().squeeze(1)
            residual[rej, draft_t[rej, accepted[rej]]] = 0.0  # a rejected draft is never resampled
            bonus = torch.multinomial(residual / residual.sum(-1, keepdim=True), 1, generator=generator)[:, 0]
        else:
            target = logits.argmax(dim=-1)  # [n, q]
            accepted = (draft_t == target[:, :kk]).long().cumprod(1).sum(1)
            bonus = target[rows_idx, accepted]
        acc, bon, dr = accepted.tolist(), bonus.tolist(), draft_t.tolist()
        for slot in range(n):
            if not running[slot]:
                continue
            r = alive[slot]
            emitted = (dr[slot][: acc[slot]] + [bon[slot]])[: max_new_tokens - len(out_tokens[r])]
            stop = next((j for j, t in enumerate(emitted) if t in eos_set), None)
            if stop is not None:
                emitted = emitted[: stop + 1]
            out_tokens[r].extend(emitted)
            if stop is not None or len(out_tokens[r]) >= max_new_tokens:
                running[slot] = False
            else:
                index[slot].extend(emitted)
                last[slot] = emitted[-1]
        # finished slots stay where they are (they idle, rewriting their own columns, until compaction)
        advance = (accepted + 1) * torch.tensor(running, dtype=torch.long, device=device)
        col, pos = col + advance, pos + advance
    return out_tokens


def decode_batch(
    model,
    input_ids,
    attention_mask,
    *,
    max_new_tokens: int,
    eos_ids,
    settings=None,
    generator=None,
    prefill_group: int = 4,
    prompt_lookup: int = 0,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` after each left-padded row of a length-sorted batch.

    Returns one token list per row, ending at (and including) the row's first EOS. Greedy unless
    ``settings.do_sample`` (temperature and top-p through transformers' logits warpers, drawn
    with ``generator``). ``prompt_lookup`` > 0: once at most ``LOOKUP_TOKENS_PER_STEP / 2`` rows
    still run, the rest is decoded with up to that many draft tokens a row per step, taken from
    the row's own prompt and output and verified in one pass (:func:`_decode_prompt_lookup`); a
    full batch gains nothing from drafts (its steps already cost what they compute). Models with
    sliding-window or non-attention layers use transformers' ``DynamicCache`` and a whole-batch
    prefill instead of the preallocated cache (and no prompt lookup).
    """
    import torch
    from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    do_sample = bool(settings is not None and settings.do_sample)
    warpers = LogitsProcessorList()
    if do_sample:
        if settings.temperature and settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p is not None and settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))

    device = input_ids.device
    rows = input_ids.shape[0]
    eos = torch.tensor(sorted({int(i) for i in eos_ids}), device=device)
    out_tokens: list[list[int]] = [[] for _ in range(rows)]
    mask = attention_mask.to(torch.long)
    if prompt_lookup < 0:
        raise ValueError(f"prompt_lookup must be >= 0, got {prompt_lookup}")
    full_attention = _full_attention_only(model.config)
    with torch.inference_mode(), _CpuLinears(model):
        if full_attention:
            capacity = input_ids.shape[1] + max_new_tokens + prompt_lookup + 1
            cache, mask, logits = _prefill(model, input_ids, mask, capacity, max(1, prefill_group))
        else:
            cache = DynamicCache(config=model.config)
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :]
        next_pos = mask.sum(-1, keepdim=True)  # position of the next token of each row
        # each slot's first real column: the attention of a decode step skips the columns left
        # of it (on the preallocated cache, whose rows are left-padded prompts)
        first_cols = (mask.shape[1] - next_pos[:, 0]).tolist() if full_attention else None
        lean = _lean_step(model, first_cols)
        first_tensor = None if first_cols is None else torch.tensor(first_cols, dtype=torch.long)
        alive = torch.arange(rows, device=device)  # original row of each batch slot
        running = torch.ones(rows, dtype=torch.bool, device=device)  # slot not finished yet
        for step in range(max_new_tokens):
            live_count = int(running.sum())
            if prompt_lookup and full_attention and 2 * live_count <= LOOKUP_TOKENS_PER_STEP:
                # few rows left: the rest with prompt-lookup drafts (several tokens a row per step)
                keep = running.nonzero().squeeze(1)
                if live_count < running.numel():
                    cache.batch_select_indices(keep)
                slots = alive[keep].tolist()
                rest = _decode_prompt_lookup(
                    model,
                    cache,
                    mask[keep],
                    logits[keep],
                    [input_ids[r][attention_mask[r].bool()].tolist() + out_tokens[r] for r in slots],
                    max_new_tokens=max_new_tokens - step,
                    eos=eos,
                    draft_tokens=prompt_lookup,
                    warpers=warpers,
                    do_sample=do_sample,
                    generator=generator,
                    lean=lean,
                )
                for r, tokens in zip(slots, rest):
                    out_tokens[r].extend(tokens)
                break
            tokens = _next_tokens(logits, warpers, do_sample, generator)
            for slot, token, live in zip(alive.tolist(), tokens.tolist(), running.tolist()):
                if live:
                    out_tokens[slot].append(token)
            if step == max_new_tokens - 1:
                break
            running &= ~torch.isin(tokens, eos)
            live_count = int(running.sum())
            if live_count == 0:
                break
            if _compact_now(running.numel() - live_count, running.numel()):
                keep = running.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, tokens, mask, next_pos = alive[keep], tokens[keep], mask[keep], next_pos[keep]
                running = running[keep]
                if first_cols is not None:
                    first_cols = [first_cols[i] for i in keep.tolist()]
                    first_tensor = torch.tensor(first_cols, dtype=torch.long)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            if lean is not None and lean.fits(1):
                logits = lean(tokens[:, None], next_pos, cache, first_tensor)[:, -1, :]
            else:
                out = model(
                    input_ids=tokens[:, None],
                    attention_mask=mask,
                    position_ids=next_pos,
                    past_key_values=cache,
                    use_cache=True,
                    **_group_kwargs(model, first_cols),
                )
                logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
    _ADDITIVE_MASK[:] = [None, None]  # do not keep the last batch's mask alive
    return out_tokens

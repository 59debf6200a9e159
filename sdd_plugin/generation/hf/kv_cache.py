"""The engine's KV cache: a preallocated full-attention layer written in place, and when to
compact a batch whose rows finished."""

from __future__ import annotations


def full_attention_only(config) -> bool:
    """True when every decoder layer is plain full attention (no sliding window, no linear layers):
    the models whose cache can be made of :class:`PreallocatedLayer` layers."""
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None)
    if types:
        return all(t == "full_attention" for t in types)
    return not getattr(text, "sliding_window", None) or not getattr(text, "use_sliding_window", True)


def preallocated_layer_class():
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
                rows = _row_indices(cols)
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


#: set by :func:`preallocated_layer_class` on first use
PreallocatedLayer = None


def _row_indices(cols):
    """``[[0], [1], ..., [B-1]]`` on the device of ``cols`` (row index for per-row column writes)."""
    import torch

    return torch.arange(cols.shape[0], device=cols.device)[:, None]


def should_compact(finished: int, slots: int) -> bool:
    """Whether to drop finished rows from the batch now: once a sixteenth of its slots are done
    (or at most 2 still run). A finished row costs its share of every step until it is dropped,
    and dropping moves the kept rows' filled cache columns, so rows are dropped a few at a time."""
    return finished > 0 and (finished >= max(1, slots // 16) or slots - finished <= 2)

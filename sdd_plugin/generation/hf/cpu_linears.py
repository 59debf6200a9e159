"""oneDNN GEMMs for a CPU fp32 model's linear layers while the engine decodes."""

from __future__ import annotations

import functools
import weakref

#: the engine runs a CPU fp32 model's linear layers through oneDNN (:class:`CpuLinears`) only up to
#: this many bytes of parameters: fused and reordered weights are a second copy of them
CPU_LINEARS_MAX_BYTES = 4 * 2**30
#: the row count oneDNN lays the reordered weights out for (a full decode batch); any count works
PACKED_GEMM_ROWS = 64


class CpuLinears:
    """Run a CPU fp32 model's ``nn.Linear`` layers as oneDNN GEMMs, siblings fused, while decoding.

    A decode step multiplies few rows by every weight of the model, so on CPU it is bound by how
    the GEMM library streams those weights; oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``,
    the kernel inductor's CPU freezing pass uses) on weights reordered once does that faster than
    MKL's ``F.linear``, more so with sibling projections fused into one GEMM.

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


#: model -> (signature of its linear weights, :meth:`CpuLinears._groups`)
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

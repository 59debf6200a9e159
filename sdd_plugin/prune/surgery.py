"""Pruning surgery: remove decoder blocks from a loaded model.

``remove_blocks(model, blocks)`` edits the model in place: drops the layers, renumbers every
``layer_idx`` so the KV cache lines up, and updates ``num_hidden_layers`` and every per-layer
config list such as ``layer_types``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def decoder_layers(model) -> Any:
    """Return the ``nn.ModuleList`` of decoder blocks of a causal LM (llama/mistral/qwen/gemma...)."""
    import torch

    candidates = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            dec = get_decoder()
        except Exception:  # noqa: BLE001 - some wrappers raise if there is no decoder
            dec = None
        if dec is not None and isinstance(getattr(dec, "layers", None), torch.nn.ModuleList):
            return dec.layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in {"layers", "h", "blocks"}:
            candidates.append((name, module))
    if len(candidates) == 1:
        return candidates[0][1]
    raise ValueError(
        f"cannot find the decoder layer list of {type(model).__name__}; candidates: "
        f"{[n for n, _ in candidates] or 'none'}"
    )


def _layer_configs(config) -> list:
    """The config objects that describe the decoder stack (the config and a nested text config)."""
    out = [config]
    for key in ("text_config", "language_config", "llm_config"):
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "num_hidden_layers"):
            out.append(sub)
    return out


def count_parameters(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates shared tensors


def validate_blocks(blocks: Sequence[int], num_layers: int) -> list[int]:
    """Sorted unique block indices; ValueError naming the bad value otherwise."""
    out = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int):
            try:
                if int(b) != b:
                    raise ValueError
                b = int(b)
            except (TypeError, ValueError):
                raise ValueError(f"block index {b!r} is not an integer") from None
        if not 0 <= b < num_layers:
            raise ValueError(
                f"block index {b} out of range: the model has {num_layers} blocks (0..{num_layers - 1})"
            )
        out.append(b)
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate block indices in {list(blocks)}")
    if not out:
        raise ValueError("no blocks to remove")
    if len(out) >= num_layers:
        raise ValueError(f"cannot remove {len(out)} of {num_layers} blocks: at least one must remain")
    return sorted(out)


def remove_blocks(model, blocks: Sequence[int]):
    """Remove decoder ``blocks`` from ``model`` in place and return it.

    Renumbers every ``layer_idx`` attribute inside the kept blocks (so the KV cache indexes line
    up), sets ``num_hidden_layers`` and drops the removed entries from every per-layer config list
    (any list whose length equals the old number of blocks, e.g. ``layer_types``).
    """
    layers = decoder_layers(model)
    num_layers = len(layers)
    removed = validate_blocks(blocks, num_layers)
    drop = set(removed)
    keep = [i for i in range(num_layers) if i not in drop]
    kept_modules = [layers[i] for i in keep]
    # nn.ModuleList has no slicing-assignment API that keeps the same object: rebuild its contents.
    for key in list(layers._modules):
        del layers._modules[key]
    for new_idx, module in enumerate(kept_modules):
        layers.add_module(str(new_idx), module)
        for sub in module.modules():
            if hasattr(sub, "layer_idx") and isinstance(sub.layer_idx, int):
                sub.layer_idx = new_idx

    seen: set[int] = set()
    configs = []
    for cfg in _layer_configs(model.config):
        if id(cfg) not in seen:
            seen.add(id(cfg))
            configs.append(cfg)
    dec = getattr(model, "get_decoder", lambda: None)()
    dec_cfg = getattr(dec, "config", None)
    if dec_cfg is not None and id(dec_cfg) not in seen:
        configs.append(dec_cfg)
    for cfg in configs:
        if getattr(cfg, "num_hidden_layers", None) != num_layers:
            continue
        for key in list(cfg.to_dict()):
            current = getattr(cfg, key, None)
            if isinstance(current, (list, tuple)) and len(current) == num_layers:
                new = [current[i] for i in keep]
                setattr(cfg, key, tuple(new) if isinstance(current, tuple) else new)
        cfg.num_hidden_layers = len(keep)
    return model

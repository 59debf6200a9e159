"""Which teacher generation backend a name means: ``auto`` picks one for this machine, and a Ray
address wraps the backend in :class:`~sdd_plugin.generation.ray_runner.RayBackend`;
:func:`release_backends` frees what the backends keep loaded between calls."""

from __future__ import annotations

import importlib.util
from typing import Any

#: The backend name that picks one by the machine: ``vllm`` on CUDA when vLLM is installed, else ``hf``.
AUTO = "auto"


def resolve_backend_name(name: str) -> str:
    """``name`` itself, or for ``auto``: ``vllm`` when CUDA is available and vLLM is installed,
    else ``hf``."""
    if name != AUTO:
        return name
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "hf"


def make_backend(name: str = AUTO, ray: bool | str | None = False, ray_workers: int | None = None) -> Any:
    """The generation backend to run: the registered backend ``name`` (``auto`` resolved here),
    or with ``ray`` (True/``"local"`` = a local Ray instance, else a cluster address) a
    :class:`~sdd_plugin.generation.ray_runner.RayBackend` whose actors run it (``auto`` then
    resolves by the cluster's GPUs). Unknown names fail here, before any weights load."""
    from ..plugins import get_backend

    if ray_workers is not None and not ray:
        raise ValueError("ray_workers needs ray (an address, or True for a local Ray instance)")
    if ray is None or ray is False:
        return get_backend(resolve_backend_name(name))
    from .ray_runner import RayBackend

    return RayBackend(name, address=None if ray is True else str(ray), workers=ray_workers)


def release_backends() -> None:
    """Free the teacher each registered backend keeps loaded for reuse (its ``close()``, when it has
    one): the model memory, and for ``vllm`` the engine's processes and GPU memory. For a process
    that goes on to other work, e.g. training after distillation."""
    from ..plugins import available, get_backend

    for name in available("backend"):
        close = getattr(get_backend(name), "close", None)
        if callable(close):
            close()

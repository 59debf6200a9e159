"""Built-in block-importance metrics: ``angular``, ``bi`` and ``last``.

Each metric turns the captured block inputs of one calibration batch (see
:class:`~sdd_plugin.interfaces.BlockMetric`) into pairwise distance sums, so a single forward pass
per batch scores every span length ``n`` at once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: listing plugins must stay cheap
    import torch

from ..hookspecs import hookimpl


def contiguous_argmin(table: torch.Tensor, n: int) -> list[int]:
    """Blocks ``[l*, l*+n)`` with ``l* = argmin_l table[l, l+n]`` (ties: the earliest ``l``).

    ``table`` is the ``[L+1, L+1]`` averaged distance table; ``table[l, l+n]`` compares the input of
    block ``l`` with the input of block ``l+n`` (index ``L`` = output of the last block).
    """
    import torch

    size = int(table.shape[0])
    num_layers = size - 1
    if not 0 < n < num_layers:
        raise ValueError(f"num_blocks n={n} must satisfy 0 < n < {num_layers} (the number of blocks)")
    starts = torch.arange(0, num_layers - n + 1)
    values = table[starts, starts + n].to(torch.float64)
    best = int(torch.argmin(values).item())
    return list(range(best, best + n))


def _token_cosines(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise cosines between the block inputs of every token, and each token's weight.

    ``states [L+1, B, T, H]`` -> ``(cos [B*T, L+1, L+1], weight [B*T])`` where ``weight`` is
    ``mask / (masked tokens of its sample)``, so ``sum_n weight[n] * f(cos[n])`` is the sum over
    samples of each sample's token mean. One batched float32 matmul on a view of the states (no
    copies; the forward pass dominates); the diagonal is exactly 1.
    """
    import torch

    num_states, batch, seq, hidden = states.shape
    x = states.to(torch.float32).permute(1, 2, 0, 3).reshape(batch * seq, num_states, hidden)
    gram = torch.bmm(x, x.transpose(1, 2))
    norm = gram.diagonal(dim1=1, dim2=2).clamp_min(1e-30).sqrt()
    cos = (gram / (norm[:, :, None] * norm[:, None, :])).clamp_(-1.0, 1.0)
    cos.diagonal(dim1=1, dim2=2).fill_(1.0)
    m = mask.to(device=states.device, dtype=torch.float64)
    weight = (m / m.sum(dim=1, keepdim=True).clamp_min(1.0)).reshape(-1)
    return cos, weight


def _weighted_sum(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_n weight[n] * values[n]`` in float64 -> ``[L+1, L+1]``."""
    import torch

    values = values.to(torch.float64)
    values[weight == 0] = 0.0  # padding positions never contribute (not even a NaN)
    return torch.einsum("nij,n->ij", values, weight)


class AngularDistance:
    """Gromov et al. (2403.17887): d(l, n) = arccos(cos(x_l, x_{l+n})) / pi, contiguous argmin."""

    name = "angular"
    description = "angular distance between the inputs of blocks l and l+n (Gromov et al. 2403.17887)"
    default_tokens = "last"

    def pair_sums(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum over samples of the token-averaged angular distance for every pair of block inputs."""
        import torch

        cos, weight = _token_cosines(states, mask)
        return _weighted_sum(torch.arccos(cos) / math.pi, weight)

    def select(self, table: torch.Tensor, n: int) -> list[int]:
        """Remove the contiguous run ``[l*, l*+n)`` of minimal angular distance."""
        return contiguous_argmin(table, n)


class BlockInfluence:
    """ShortGPT Block Influence: BI_i = 1 - E_tokens[cos(x_i, x_{i+1})].

    The table holds ``1 - cos`` for every span (``table[i, i+1]`` is BI of block ``i``).
    ``select`` follows ShortGPT: it removes the ``n`` blocks with the lowest single-block BI, which
    need **not** be contiguous.
    """

    name = "bi"
    description = (
        "ShortGPT Block Influence 1 - cos(x_i, x_i+1); removes the n lowest-BI blocks (non-contiguous)"
    )
    default_tokens = "all"

    def pair_sums(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum over samples of the token-averaged ``1 - cos`` for every pair of block inputs."""
        cos, weight = _token_cosines(states, mask)
        return _weighted_sum(1.0 - cos, weight)

    def select(self, table: torch.Tensor, n: int) -> list[int]:
        """The ``n`` blocks with the lowest BI (ties: earlier block first), sorted."""
        import torch

        num_layers = int(table.shape[0]) - 1
        if not 0 < n < num_layers:
            raise ValueError(f"num_blocks n={n} must satisfy 0 < n < {num_layers} (the number of blocks)")
        idx = torch.arange(num_layers)
        bi = table[idx, idx + 1].to(torch.float64)
        order = sorted(range(num_layers), key=lambda i: (float(bi[i]), i))
        return sorted(order[:n])


class DropLast:
    """Baseline: remove the ``n`` blocks just before the final block, ``[L-1-n, L-1)``.

    Its table is the angular distance (for information only; the choice ignores it).
    """

    name = "last"
    description = "baseline: drop the n blocks before the final block (table = angular distance)"
    default_tokens = "last"

    def pair_sums(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Angular distance sums (same as ``angular``), kept for the report."""
        return AngularDistance().pair_sums(states, mask)

    def select(self, table: torch.Tensor, n: int) -> list[int]:
        """Blocks ``[L-1-n, L-1)``: the final block is kept."""
        num_layers = int(table.shape[0]) - 1
        if not 0 < n < num_layers:
            raise ValueError(f"num_blocks n={n} must satisfy 0 < n < {num_layers} (the number of blocks)")
        return list(range(num_layers - 1 - n, num_layers - 1))


@hookimpl
def sdd_block_metrics():
    """The built-in metrics."""
    return [AngularDistance(), BlockInfluence(), DropLast()]

"""Built-in block-importance metrics: ``angular``, ``bi`` and ``last``.

Each metric turns the captured block inputs of one calibration batch (see
:class:`~sdd_plugin.interfaces.BlockMetric`) into pairwise distance sums, so a single forward pass
per batch scores every span length ``n`` at once.
"""

from __future__ import annotations

import math

import torch

from ..hookspecs import hookimpl


def contiguous_argmin(table: torch.Tensor, n: int) -> list[int]:
    """Blocks ``[l*, l*+n)`` with ``l* = argmin_l table[l, l+n]`` (ties: the earliest ``l``).

    ``table`` is the ``[L+1, L+1]`` averaged distance table; ``table[l, l+n]`` compares the input of
    block ``l`` with the input of block ``l+n`` (index ``L`` = output of the last block).
    """
    size = int(table.shape[0])
    num_layers = size - 1
    if not 0 < n < num_layers:
        raise ValueError(f"num_blocks n={n} must satisfy 0 < n < {num_layers} (the number of blocks)")
    starts = torch.arange(0, num_layers - n + 1)
    values = table[starts, starts + n].to(torch.float64)
    best = int(torch.argmin(values).item())
    return list(range(best, best + n))


def _cosines(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample, token-averaged pairwise cosine ``[B, L+1, L+1]`` of the states ``[L+1, B, T, H]``."""
    x = torch.nn.functional.normalize(states.to(torch.float64), dim=-1, eps=1e-12)
    m = mask.to(torch.float64)  # [B, T]
    counts = m.sum(dim=1).clamp_min(1.0)  # [B]
    # Gram over layers for every token, summed over masked tokens: [B, L+1, L+1]
    cos = torch.einsum("ibth,jbth,bt->bij", x, x, m)
    return cos / counts[:, None, None]


def _angular_from_states(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = torch.nn.functional.normalize(states.to(torch.float64), dim=-1, eps=1e-12)
    m = mask.to(torch.float64)
    counts = m.sum(dim=1).clamp_min(1.0)
    cos = torch.einsum("ibth,jbth->btij", x, x).clamp(-1.0, 1.0)  # [B, T, L+1, L+1]
    dist = torch.arccos(cos) / math.pi
    dist = torch.einsum("btij,bt->bij", dist, m) / counts[:, None, None]
    return dist.sum(dim=0)


class AngularDistance:
    """Gromov et al. (2403.17887): d(l, n) = arccos(cos(x_l, x_{l+n})) / pi, contiguous argmin."""

    name = "angular"
    description = "angular distance between the inputs of blocks l and l+n (Gromov et al. 2403.17887)"
    default_tokens = "last"

    def pair_sums(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum over samples of the token-averaged angular distance for every pair of block inputs."""
        if states.shape[2] == 1:
            return _angular_from_states(states, mask)
        # chunk over tokens so [B, T, L+1, L+1] stays small in "all" mode
        out = torch.zeros(states.shape[0], states.shape[0], dtype=torch.float64, device=states.device)
        batch = states.shape[1]
        for b in range(batch):
            out += _angular_from_states(states[:, b : b + 1], mask[b : b + 1])
        return out

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
        return (1.0 - _cosines(states, mask)).sum(dim=0)

    def select(self, table: torch.Tensor, n: int) -> list[int]:
        """The ``n`` blocks with the lowest BI (ties: earlier block first), sorted."""
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

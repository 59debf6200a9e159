"""The teacher's top-k next-token log-probabilities at each generated token, collected during decoding.

:class:`TopLogprobs` is handed to :func:`~.decoding.decode_batch`; the loop gives it the logits
each token was chosen from (before any sampling warpers, so the log-probabilities are the model's
own, temperature 1), one entry per token it appends to a row.
"""

from __future__ import annotations


class TopLogprobs:
    """Per row of a batch: ``(top ids, top log-probs)`` of each generated token, most probable first."""

    def __init__(self, k: int, rows: int) -> None:
        if k < 1:
            raise ValueError(f"top-k must be >= 1, got {k}")
        self.k = k
        self.ids: list[list[list[int]]] = [[] for _ in range(rows)]
        self.logprobs: list[list[list[float]]] = [[] for _ in range(rows)]

    def _top(self, logits):
        import torch

        top = torch.log_softmax(logits.float(), dim=-1).topk(min(self.k, logits.shape[-1]), dim=-1)
        return top.indices.tolist(), top.values.tolist()

    def add(self, rows: list[int], logits) -> None:
        """One token for each of ``rows``: ``logits[i]`` (``[len(rows), V]``) is what row
        ``rows[i]``'s token was chosen from."""
        if not rows:
            return
        ids, values = self._top(logits)
        for r, i, v in zip(rows, ids, values):
            self.ids[r].append(i)
            self.logprobs[r].append(v)

    def extend(self, row: int, logits) -> None:
        """Consecutive tokens of one row: ``logits`` is ``[n, V]``, one line per token."""
        if logits.shape[0] == 0:
            return
        ids, values = self._top(logits)
        self.ids[row].extend(ids)
        self.logprobs[row].extend(values)

    def view(self, rows: list[int]) -> TopLogprobs:
        """A collector for a sub-batch whose row ``j`` is this collector's row ``rows[j]``."""
        sub = TopLogprobs.__new__(TopLogprobs)
        sub.k = self.k
        sub.ids = [self.ids[r] for r in rows]  # the same lists: appends land here
        sub.logprobs = [self.logprobs[r] for r in rows]
        return sub

    def row(self, r: int) -> tuple[list[list[int]], list[list[float]]]:
        """``(ids, logprobs)`` of row ``r``: one ``k``-list per generated token."""
        return self.ids[r], self.logprobs[r]

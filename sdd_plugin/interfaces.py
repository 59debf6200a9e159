"""The objects that plugins provide through the hooks in :mod:`sdd_plugin.hookspecs`.

Each is a small protocol with a ``name`` (what users select in the CLI, the Python API and the
Axolotl recipe) and one or two methods. Built-ins live in :mod:`sdd_plugin.builtins` and are
registered exactly like third-party plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

TokenMode = Literal["last", "all"]


@runtime_checkable
class BlockMetric(Protocol):
    """Scores how much a run of contiguous decoder blocks changes the residual stream.

    The scorer captures ``states``: the input of every decoder block plus the output of the last
    block (shape ``[L+1, B, T, H]``, float32; index ``l`` is the input of block ``l``; index ``L``
    is the residual stream after the last block, *before* the final norm), and a boolean ``mask``
    ``[B, T]`` of the tokens to use (every non-pad token when the token mode is ``"all"``; in
    ``"last"`` mode the scorer passes only the final real token of each row, so ``T == 1`` and the
    mask is all true). ``pair_sums`` is called once per calibration batch on the model's device.
    """

    name: str
    description: str
    default_tokens: TokenMode

    def pair_sums(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return ``S`` of shape ``[L+1, L+1]``: ``S[i, j]`` (for ``j > i``) is the *sum over the B
        samples* of the per-sample distance between block input ``i`` and block input ``j``
        (each sample's distance averaged over its masked tokens). Lower = less important."""
        ...

    def select(self, table: torch.Tensor, n: int) -> list[int]:
        """Given the averaged table ``D[i, j]`` (``[L+1, L+1]``), return the ``n`` block indices
        to remove. Contiguous metrics return ``range(l*, l*+n)`` with ``l* = argmin_l D[l, l+n]``."""
        ...


@runtime_checkable
class DistillTemplate(Protocol):
    """Turns one fine-tuning example into the teacher's rewrite prompt (SDFT style)."""

    name: str

    def render(self, instruction: str, reference: str) -> tuple[list[dict[str, str]], str]:
        """Return ``(messages, assistant_prefix)``: chat messages that the teacher's own chat
        template renders, and text that seeds the assistant turn (may be ``""``). The prefix is
        *not* part of the distilled response."""
        ...


@runtime_checkable
class AnswerChecker(Protocol):
    """Decides whether a teacher rewrite may replace the original response."""

    name: str

    def check(self, rewrite: str, reference: str, expected: str | None = None) -> str | None:
        """Return ``None`` to accept ``rewrite``, else a short reason code (e.g.
        ``"answer_mismatch"``, ``"mentions_reference"``) kept per row in the report.
        ``expected`` is a dataset-provided final answer when there is one."""
        ...


@dataclass
class GenerationSettings:
    """Settings for teacher regeneration.

    ``extra`` holds backend options; one every backend should honour: ``logprobs_top_k`` (int,
    0 or absent = off) asks for the teacher's top-k log-probabilities at each generated token
    (:attr:`GenerationResult.logprobs`).
    """

    max_new_tokens: int = 256
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenLogprobs:
    """The teacher's top-k next-token distribution at each generated token."""

    token_ids: list[int]
    """The generated tokens, the EOS that ended the generation included."""
    top_ids: list[list[int]]
    """Per generated token, the ``k`` most probable token ids at its position, most probable first."""
    top_logprobs: list[list[float]]
    """Their log-probabilities: log-softmax of the model's logits (temperature 1, before any
    sampling warpers), so greedy and sampled generations report the same distribution."""


@dataclass
class GenerationResult:
    """One finished generation: the index of its prompt, the text, and its token count."""

    index: int
    text: str
    num_tokens: int
    finished: bool = True
    """False when generation stopped at ``max_new_tokens`` instead of an EOS (truncated)."""
    logprobs: TokenLogprobs | None = None
    """Only when ``settings.extra["logprobs_top_k"]`` asked for it."""


@runtime_checkable
class GenerationBackend(Protocol):
    """Generates teacher continuations for already-rendered prompt strings."""

    name: str

    def generate(
        self,
        model_path: str,
        prompts: Sequence[str],
        settings: GenerationSettings,
        on_result: Callable[[GenerationResult], None],
    ) -> None:
        """Generate a continuation for every prompt and call ``on_result`` as each finishes
        (in any order), so callers can persist finished rows incrementally."""
        ...

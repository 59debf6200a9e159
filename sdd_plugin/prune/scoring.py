"""Block importance from one forward pass per calibration batch, for every span length n at once.

Forward pre-hooks on each decoder block capture its input (the residual stream), and a forward
hook on the last block captures its output, *before* the final norm (``hidden_states[-1]`` of
transformers is the normed output, so it is not used). The metric turns these ``L+1`` states into
pairwise distance sums; averaging over samples gives the table ``D`` with
``d(l, n) = D[l, l+n]``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import plugins


@dataclass
class ScoreResult:
    """The averaged distance table and the best start block per n."""

    metric: str
    tokens: str
    table: torch.Tensor  #: [L+1, L+1]; d(l, n) = table[l, l+n]
    num_samples: int
    num_tokens: int
    best_start: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_layers(self) -> int:
        """Number of decoder blocks L."""
        return int(self.table.shape[0]) - 1

    def distance(self, start: int, n: int) -> float:
        """d(start, n) = table[start, start+n]."""
        return float(self.table[start, start + n])

    def removed(self, n: int) -> list[int]:
        """The blocks the metric removes for span length ``n``."""
        return list(plugins.get_metric(self.metric).select(self.table, n))

    def rows(self) -> list[dict[str, Any]]:
        """One row per n: n, best start l*, d(l*, n), and the removed blocks."""
        out = []
        for n in range(1, self.num_layers):
            blocks = self.removed(n)
            l_star = self.best_start[n]
            out.append({"n": n, "start": l_star, "distance": self.distance(l_star, n), "removed": blocks})
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict: metric, token mode, sizes, the full table and per-n rows."""
        L = self.num_layers
        dist = [
            [None if s + n > L else round(self.distance(s, n), 6) for s in range(L)] for n in range(L + 1)
        ]
        return {
            "metric": self.metric,
            "tokens": self.tokens,
            "num_layers": L,
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "seconds": round(self.seconds, 3),
            "best": self.rows(),
            "table": [[round(float(v), 6) for v in row] for row in self.table.tolist()],
            "d_by_n_start": dist,
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_json` atomically."""
        from ..cache import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | Path) -> ScoreResult:
        """Rebuild from :meth:`to_json` output (dict or path)."""
        if not isinstance(data, dict):
            data = json.loads(Path(data).read_text(encoding="utf-8"))
        table = torch.tensor(data["table"], dtype=torch.float64)
        res = cls(data["metric"], data["tokens"], table, data["num_samples"], data["num_tokens"])
        res.best_start = {int(r["n"]): int(r["start"]) for r in data["best"]}
        res.seconds = float(data.get("seconds", 0.0))
        return res

    def markdown_table(self) -> str:
        """Markdown table: n, best start l*, d(l*, n), removed blocks."""
        lines = ["| n | l* | d(l*, n) | removed blocks |", "|---:|---:|---:|---|"]
        for r in self.rows():
            blocks = r["removed"]
            contiguous = blocks == list(range(blocks[0], blocks[0] + len(blocks)))
            shown = f"{blocks[0]}..{blocks[-1]}" if contiguous and len(blocks) > 1 else str(blocks)
            lines.append(f"| {r['n']} | {r['start']} | {r['distance']:.4f} | {shown} |")
        lines.append("")
        lines.append(
            "l* = argmin over l of d(l, n) = table[l, l+n]; `removed blocks` is what the "
            f"`{self.metric}` metric removes for that n."
        )
        return "\n".join(lines)

    def plot_heatmap(
        self, path: str | Path, title: str | None = None, highlight: tuple[list[int], int] | None = None
    ) -> Path:
        """PNG heatmap of d(l, n): x = start block l, y = n, masked where l+n > L; dots mark l* per n."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        L = self.num_layers
        grid = np.full((L, L), np.nan)  # rows n=1..L-1 (index n), cols l
        for n in range(1, L):
            for s in range(0, L - n + 1):
                if s < L:
                    grid[n, s] = self.distance(s, n)
        fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * L + 3), max(4.0, 0.22 * L + 2.5)), dpi=120)
        masked = np.ma.masked_invalid(grid[1:])
        im = ax.imshow(
            masked, origin="lower", aspect="auto", cmap="viridis", extent=(-0.5, L - 0.5, 0.5, L - 0.5)
        )
        ns = list(range(1, L))
        ax.scatter(
            [self.best_start[n] for n in ns],
            ns,
            marker="o",
            s=18,
            c="white",
            edgecolors="black",
            linewidths=0.6,
            label="argmin over l",
        )
        if highlight is not None:
            blocks, n = highlight
            ax.scatter([blocks[0]], [n], marker="*", s=120, c="red", label=f"pruned (n={n})")
        ax.set_xlabel("start block l")
        ax.set_ylabel("number of blocks n")
        ax.set_title(title or f"{self.metric} distance d(l, n)")
        fig.colorbar(im, ax=ax, label=f"{self.metric} d(l, n)")
        ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


def _block_output(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.hidden_states if hasattr(output, "hidden_states") else output[0]


class _Capture:
    """Forward hooks that keep the L+1 residual-stream states of the current batch."""

    def __init__(self, layers, select: torch.Tensor | None = None) -> None:
        self.layers = layers
        self.states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
        self.select: torch.Tensor | None = select  # [B] token index per row ("last" mode)
        self.handles = []

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        if self.select is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            return x[rows, self.select].unsqueeze(1).float()  # [B, 1, H]
        return x.float() if x.dtype != torch.float32 else x

    def __enter__(self) -> _Capture:
        for i, layer in enumerate(self.layers):

            def pre(module, args, kwargs, i=i):
                self.states[i] = self._keep(_block_input(args, kwargs))

            self.handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))

        def post(module, args, output):
            self.states[-1] = self._keep(_block_output(output))

        self.handles.append(self.layers[-1].register_forward_hook(post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def stacked(self) -> torch.Tensor:
        missing = [i for i, s in enumerate(self.states) if s is None]
        if missing:
            raise RuntimeError(f"block hooks did not fire for states {missing}")
        out = torch.stack(self.states)  # type: ignore[arg-type]
        self.states = [None] * len(self.states)
        return out


def _base_model(model):
    """The decoder stack without the LM head (saves the vocab projection during scoring)."""
    base = getattr(model, "base_model_prefix", None)
    inner = getattr(model, base, None) if base else None
    return inner if isinstance(inner, torch.nn.Module) else model


def score_blocks(
    model,
    tokenizer,
    texts: Sequence[str],
    metric: str = "angular",
    tokens: str | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    progress: bool = True,
) -> ScoreResult:
    """Score every span of contiguous blocks with one forward pass per calibration batch.

    ``tokens="last"`` compares the final real token of each text, ``"all"`` averages over every
    non-pad token (default: the metric's ``default_tokens``). Returns a :class:`ScoreResult`.
    """
    from tqdm.auto import tqdm

    from .surgery import decoder_layers

    metric_obj = plugins.get_metric(metric)
    mode = tokens or metric_obj.default_tokens
    if mode not in ("last", "all"):
        raise ValueError(f"tokens must be 'last' or 'all', got {mode!r}")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("calibration set is empty: no non-empty texts to score")
    if batch_size <= 0 or max_length <= 1:
        raise ValueError(f"batch_size ({batch_size}) and max_length ({max_length}) must be positive")

    layers = decoder_layers(model)
    size = len(layers) + 1
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    runner = _base_model(model)
    sums = torch.zeros(size, size, dtype=torch.float64)
    n_samples = n_tokens = 0
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(
            total=len(texts), desc=f"scoring blocks ({metric}, {mode})", unit="sample", disable=not progress
        )
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                enc = tokenizer(
                    chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length
                )
                ids = enc["input_ids"].to(device)
                mask = enc["attention_mask"].to(device)
                lengths = mask.sum(dim=1)
                if bool((lengths == 0).any()):
                    raise ValueError(
                        f"calibration texts {start}..{start + len(chunk) - 1} contain an empty tokenization"
                    )
                last = lengths - 1  # right padding: the final real token of each row
                select = last if mode == "last" else None
                with _Capture(layers, select) as cap:
                    runner(input_ids=ids, attention_mask=mask, use_cache=False)
                    states = cap.stacked()
                use = (
                    torch.ones(len(chunk), 1, dtype=torch.bool, device=states.device)
                    if mode == "last"
                    else mask.bool()
                )
                sums += metric_obj.pair_sums(states, use).detach().to("cpu", torch.float64)
                n_samples += len(chunk)
                n_tokens += int(lengths.sum())
                bar.update(len(chunk))
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(tok_s=f"{n_tokens / elapsed:.0f}", refresh=False)
        bar.close()
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    table = sums / n_samples
    result = ScoreResult(metric, mode, table, n_samples, n_tokens, seconds=time.perf_counter() - t0)
    L = size - 1
    for n in range(1, L):
        starts = torch.arange(0, L - n + 1)
        vals = table[starts, starts + n]
        result.best_start[n] = int(torch.argmin(vals).item())
    if any(math.isnan(float(v)) for v in table.flatten()):
        raise ValueError("scoring produced NaN distances (check the model weights and calibration texts)")
    return result


def score_model(
    model: str = "smollm2-135m-instruct",
    metric: str = "angular",
    calibration: str | None = None,
    tokens: str | None = None,
    num_samples: int = 64,
    max_length: int = 256,
    batch_size: int = 8,
    dtype: str = "float32",
    text_field: str | None = None,
    progress: bool = True,
) -> ScoreResult:
    """Resolve ``model``, load the calibration texts, then load weights and :func:`score_blocks`.

    Metric, token mode, sizes and the calibration source are validated before weights load.
    """
    from ..models import load_model, resolve_model
    from .calibration import load_calibration_texts

    metric_obj = plugins.get_metric(metric)
    if tokens is not None and tokens not in ("last", "all"):
        raise ValueError(f"tokens must be 'last' or 'all', got {tokens!r}")
    for name, value in (("num_samples", num_samples), ("max_length", max_length), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    path = resolve_model(model)
    texts = load_calibration_texts(calibration, limit=num_samples, text_field=text_field)
    lm, tok = load_model(path, dtype=dtype)
    return score_blocks(
        lm,
        tok,
        texts,
        metric=metric,
        tokens=tokens or metric_obj.default_tokens,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )


def write_score_outputs(
    result: ScoreResult, out_dir: str | Path, title: str | None = None
) -> dict[str, Path]:
    """Write ``score.json``, ``score.md`` and ``heatmap.png`` into ``out_dir``; return their paths."""
    from ..cache import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "score.json", "md": out / "score.md", "png": out / "heatmap.png"}
    result.save_json(paths["json"])
    md = (
        f"# Block scores: {title or result.metric}\n\n"
        f"metric `{result.metric}`, tokens `{result.tokens}`, {result.num_samples} samples, "
        f"{result.num_tokens} tokens, {result.num_layers} blocks.\n\n"
        f"{result.markdown_table()}\n\n![d(l, n)](heatmap.png)\n"
    )
    write_text_atomic(paths["md"], md)
    result.plot_heatmap(paths["png"], title=title)
    return paths

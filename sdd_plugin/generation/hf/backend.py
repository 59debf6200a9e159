"""Built-in teacher generation backend ``hf``: batched transformers ``generate`` on CPU or GPU.

Prompts are sorted by token length (longest first) and cut into fixed batches
(:func:`plan_batches`), left-padded, and generated greedily by default (sampling optional) under
``torch.inference_mode()`` until every row hits an EOS id (the tokenizer's and the generation
config's) or ``max_new_tokens``. Only the new tokens are decoded, special tokens skipped.
``num_tokens`` counts generated tokens up to and including the first EOS (padding after it is not
counted). A tqdm bar shows rows/s, with tokens/s in its postfix.

``settings.extra`` keys understood here: ``dtype`` (``"float32"``, ``"bfloat16"``, ...),
``device`` (default: cuda when available, else cpu), ``cache_implementation`` (passed to
``generate``, e.g. ``"static"``), ``engine`` (``"decode"``, the default, or ``"generate"``),
``prompt_lookup`` (draft tokens per step taken from the row's own prompt and output and verified
in one pass once few rows of a batch are left; 0 = off. Default: :data:`DEFAULT_PROMPT_LOOKUP`
for fp32 models, where greedy tokens stay identical to plain decoding (docs/RESULTS.md has the
measurements); 0 for other dtypes, where the verification pass rounds differently from plain
steps and changes some rewrites), ``logprobs_top_k`` (int, 0 = off: each result then carries the
teacher's top-k log-probabilities at every generated token, EOS included; the tokens are the same).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ...hookspecs import hookimpl
from ...interfaces import GenerationResult, GenerationSettings, TokenLogprobs
from ..backend_args import HFOptions
from .attention import register_gqa_attention
from .decoding import decode_batch
from .top_logprobs import TopLogprobs


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Fixed batches of prompt indices: sorted by length (longest first, ties by index), then cut
    into chunks of ``batch_size``. A subset made of whole batches plans into the same batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every EOS id: the tokenizer's plus the generation config's (int or list)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if gen_eos is not None:
        ids.extend(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    return sorted(set(ids))


#: draft tokens per step proposed from the row's own prompt + output, by default for fp32 models
#: (other dtypes default to 0 = off)
DEFAULT_PROMPT_LOOKUP = 4


class HFBackend:
    """Batched ``model.generate`` with left padding and length-sorted fixed batches."""

    name = "hf"
    options = HFOptions  # what `--backend-arg` / `sdd_distill_backend_args` may set

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ model
    def load(self, model_path: str, settings: GenerationSettings | None = None):
        """``(model, tokenizer)`` for ``model_path``, loaded once per process and reused."""
        import torch

        from ...models import load_model

        extra = (settings.extra if settings else {}) or {}
        dtype = str(extra.get("dtype", "float32"))
        device = str(extra.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        attention = str(extra.get("attention", "gqa"))
        key = (str(model_path), dtype, device, attention)
        if key not in self._loaded:
            model, tok = load_model(model_path, dtype=dtype)
            model.to(device)
            if attention == "gqa":
                if model.config._attn_implementation == "sdpa":
                    model.set_attn_implementation(register_gqa_attention())
            elif attention != "default":
                model.set_attn_implementation(attention)
            self._loaded = {key: (model, tok)}  # keep one teacher in memory
        return self._loaded[key]

    def close(self) -> None:
        """Drop the loaded teacher and free its memory (e.g. before training starts in this process)."""
        import gc

        import torch

        self._loaded = {}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def prompt_lengths(self, tokenizer, prompts: Sequence[str]) -> list[int]:
        """Token length of each rendered prompt (no special tokens added: the template has them)."""
        if not prompts:
            return []
        return [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]

    @staticmethod
    def _generate_stock(model, enc, gen_kwargs, generator, top: TopLogprobs | None = None) -> list[list[int]]:
        """One batch through ``model.generate`` (the ``engine: generate`` path); ``top`` receives
        every step's raw logits (rows past their EOS included: the caller cuts them off)."""
        import torch

        if generator is not None:
            torch.manual_seed(int(generator.initial_seed()))
        with torch.inference_mode():
            if top is None:
                out = model.generate(**enc, **gen_kwargs)
            else:
                res = model.generate(**enc, **gen_kwargs, output_logits=True, return_dict_in_generate=True)
                out = res.sequences
                rows = list(range(out.shape[0]))
                for step_logits in res.logits:
                    top.add(rows, step_logits)
        return out[:, enc["input_ids"].shape[1] :].tolist()

    # -------------------------------------------------------------- generate
    def generate(
        self,
        model_path: str,
        prompts: Sequence[str],
        settings: GenerationSettings,
        on_result: Callable[[GenerationResult], None],
        *,
        show_progress: bool = True,
        desc: str = "distill",
    ) -> None:
        """Generate a continuation of every prompt; ``on_result`` is called per row as each batch ends."""
        import torch
        from tqdm.auto import tqdm

        from ...cache import stable_hash

        if settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
        model, tok = self.load(model_path, settings)
        eos_ids = stop_token_ids(tok, model.generation_config)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
        batches = plan_batches(self.prompt_lengths(tok, prompts), settings.batch_size)
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            do_sample=settings.do_sample,
        )
        if settings.do_sample:
            gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:  # silence "temperature is set but do_sample=False" from the model's own config
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if settings.extra.get("cache_implementation"):
            gen_kwargs["cache_implementation"] = settings.extra["cache_implementation"]
        prompt_lookup = settings.extra.get("prompt_lookup")
        if prompt_lookup is None:
            prompt_lookup = DEFAULT_PROMPT_LOOKUP if model.dtype == torch.float32 else 0
        if isinstance(prompt_lookup, bool) or not isinstance(prompt_lookup, int) or prompt_lookup < 0:
            raise ValueError(
                f"settings.extra['prompt_lookup'] must be an integer >= 0 (0 = off), got {prompt_lookup!r}"
            )
        top_k = settings.extra.get("logprobs_top_k") or 0
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(
                f"settings.extra['logprobs_top_k'] must be an integer >= 0 (0 = off), got {top_k!r}"
            )
        engine = str(settings.extra.get("engine", "decode"))
        if engine not in ("decode", "generate"):
            raise ValueError(f"settings.extra['engine'] must be 'decode' or 'generate', got {engine!r}")

        total_tokens, start = 0, time.perf_counter()
        bar = tqdm(total=len(prompts), desc=desc, unit="row", disable=not show_progress, dynamic_ncols=True)
        try:
            for batch in batches:
                texts = [prompts[i] for i in batch]
                enc = tok(
                    texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
                ).to(model.device)
                generator = None
                if settings.do_sample:  # same batch -> same samples, also after a resume
                    generator = torch.Generator(device=model.device)
                    generator.manual_seed(settings.seed + int(stable_hash(texts, 8), 16))
                top = TopLogprobs(top_k, len(batch)) if top_k else None
                if engine == "generate":
                    new = self._generate_stock(model, enc, gen_kwargs, generator, top)
                else:
                    new = decode_batch(
                        model,
                        enc["input_ids"],
                        enc["attention_mask"],
                        max_new_tokens=settings.max_new_tokens,
                        eos_ids=eos_ids,
                        settings=settings,
                        generator=generator,
                        prompt_lookup=prompt_lookup,
                        top_logprobs=top,
                    )
                for slot, (row_idx, ids) in enumerate(zip(batch, new)):
                    stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                    kept = ids if stop is None else ids[:stop]
                    num = len(ids) if stop is None else stop + 1
                    total_tokens += num
                    text = tok.decode(kept, skip_special_tokens=True)
                    logprobs = None
                    if top is not None:
                        top_ids, top_lps = top.row(slot)
                        logprobs = TokenLogprobs(ids[:num], top_ids[:num], top_lps[:num])
                    result = GenerationResult(row_idx, text.strip(), num, stop is not None, logprobs)
                    on_result(result)
                bar.update(len(batch))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(tok_s=f"{total_tokens / elapsed:.1f}", refresh=False)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        self.last_stats = {"rows": len(prompts), "tokens": total_tokens, "seconds": elapsed}


#: One instance per process, so a loaded teacher is reused across calls.
HF_BACKEND = HFBackend()


@hookimpl
def sdd_generation_backends():
    """The built-in backends."""
    return [HF_BACKEND]

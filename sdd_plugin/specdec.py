"""Speculative decoding with the pruned model as the draft (transformers assisted generation).

For every prompt the target decodes greedily alone and with ``assistant_model=draft`` (batch size 1,
as assisted generation requires), interleaved so both timings come from the same conditions. The
greedy outputs must be token-identical (assisted greedy decoding is lossless); mismatches are
counted and reported.

How accepted tokens are counted, without touching transformers internals: a forward pre-hook on the
target records the ``input_ids`` of every target forward pass made during assisted generation. Each
such pass verifies one block of draft tokens: the first pass sees ``prompt + k`` tokens, every later
pass ``1 + k`` tokens (the last accepted token, then ``k`` draft proposals). Walking these passes
along the final output, a proposal is *accepted* when it equals the output token at its position
(the accepted run is the longest matching prefix); each pass then adds one target token (the
correction or bonus token). The walk checks itself (the token fed back must equal the output token)
and the counts must add up to the generated length. A second hook counts draft forward passes.

- ``acceptance_rate`` = accepted draft tokens / proposed draft tokens
- ``accepted_per_step`` = accepted draft tokens / target forward passes
- ``tokens_per_step`` = new tokens / target forward passes (1.0 for the target alone)
- ``speedup`` = wall-clock time of the target alone / time of assisted generation (noisy on a
  shared CPU: compare within one run only)
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TIMING_WARNING = (
    "Wall-clock ratios measured on a shared or busy CPU are noisy; compare target and assisted times "
    "from the same run only (they are interleaved per prompt), and repeat with --repeats for stability."
)

GENERAL_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Explain in two sentences why the sky is blue.",
    "Give three tips for staying focused while studying.",
    "Write a short, friendly email inviting a colleague to lunch on Friday.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the water cycle in a few sentences.",
    "Name three planets of the solar system and one fact about each.",
    "How do I make a cup of tea? List the steps.",
]


def default_prompts(n_math: int = 8) -> list[str]:
    """The built-in prompt set: ``n_math`` synthetic word problems + 8 general questions (16 in all)."""
    from .data.synthetic import word_problems

    math = [r["question"] + " Think step by step." for r in word_problems(n_math, seed=0, split="test")]
    return [p for pair in zip(math, GENERAL_PROMPTS) for p in pair] + math[len(GENERAL_PROMPTS) :]


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: ``.txt`` (one per non-empty line), ``.json`` list, or ``.jsonl`` rows with
    a ``prompt``, ``question``, ``instruction`` or ``text`` field (first one present)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    fields = ("prompt", "question", "instruction", "text")

    def pick(row: Any, where: str) -> str:
        if isinstance(row, str):
            return row
        if isinstance(row, dict):
            for f in fields:
                if isinstance(row.get(f), str) and row[f].strip():
                    return row[f]
        raise ValueError(f"{where}: expected a string or an object with one of {fields}")

    if path.suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    prompts.append(pick(json.loads(line), f"{path} line {i}"))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {i} is not valid JSON: {exc}") from exc
    elif path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        prompts = [pick(r, f"{path} item {i}") for i, r in enumerate(data)]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} contains no prompts")
    return prompts


def _vocab_size(folder: Path) -> int | None:
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")


def _layout_folder(spec: str | os.PathLike) -> tuple[Path, str, Path | None]:
    """(folder whose config applies, kind, base) for a model folder / LoRA adapter; no weights load."""
    from .merge import resolve_input

    inp = resolve_input(spec)
    return inp.weights_folder, inp.kind, inp.path if inp.kind == "lora" else None


def load_causal_lm(spec: str | os.PathLike, dtype: str = "float32"):
    """Load a model folder / hub id / embedded name, or a LoRA adapter merged in memory (peft)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder, kind, adapter = _layout_folder(spec)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), use_safetensors=True)
    if kind == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model


@dataclass
class _Pass:
    n_input: int
    first_token: int
    tail: list[int]


class _PassRecorder:
    """Forward pre-hook recording the input ids of each forward pass while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.passes: list[_Pass] = []

    def __call__(self, module, args, kwargs):  # noqa: ANN001 - torch hook signature
        if not self.active:
            return None
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:  # inputs_embeds only: cannot be reconstructed, count the pass
            self.passes.append(_Pass(0, -1, []))
            return None
        row = ids[0].tolist()
        self.passes.append(_Pass(len(row), row[0], row))
        return None


def _walk_passes(passes: list[_Pass], prompt_len: int, output: list[int]) -> dict[str, Any]:
    """Accepted/proposed draft tokens per target pass, reconstructed against the final ``output``
    (prompt + new tokens). Returns per-pass lists and a ``consistent`` flag."""
    cur = prompt_len
    proposed, accepted = [], []
    consistent = True
    for i, p in enumerate(passes):
        if i == 0:
            k = p.n_input - prompt_len
            cand = p.tail[prompt_len:]
        else:
            k = p.n_input - 1
            cand = p.tail[1:]
            if cur - 1 >= len(output) or p.first_token != output[cur - 1]:
                consistent = False
        if k < 0:
            consistent = False
            k, cand = 0, []
        a = 0
        while a < k and cur + a < len(output) and cand[a] == output[cur + a]:
            a += 1
        proposed.append(k)
        accepted.append(a)
        cur += a + 1
    # every pass adds its accepted run plus one target token (except when EOS / max length cut it)
    n_new = len(output) - prompt_len
    if not (n_new <= cur - prompt_len <= n_new + 1):
        consistent = False
    return {"proposed": proposed, "accepted": accepted, "consistent": consistent}


def _first_mismatch(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def measure_specdec(
    target: str | os.PathLike,
    draft: str | os.PathLike,
    prompts: list[str] | None = None,
    max_new_tokens: int = 64,
    num_assistant_tokens: int | None = None,
    repeats: int = 1,
    chat_template: bool = True,
    out: str | os.PathLike | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Measure speculative decoding of ``target`` with ``draft`` on ``prompts`` (greedy, batch 1).

    ``target``/``draft``: model folders, hub ids, embedded names or LoRA adapter folders.
    ``num_assistant_tokens=None`` keeps transformers' defaults (up to 20 draft tokens, stopping
    early when the draft's confidence drops); an integer drafts exactly that many per step.
    Returns the summary dict; with ``out`` also writes ``specdec.json``, ``specdec.md`` and
    ``specdec.png``.
    """
    import torch
    from tqdm.auto import tqdm

    from .models import check_generation_fits, load_tokenizer

    builtin = prompts is None
    prompts = default_prompts() if prompts is None else list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    for name, value in (("max_new_tokens", max_new_tokens), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_assistant_tokens is not None and (
        isinstance(num_assistant_tokens, bool)
        or not isinstance(num_assistant_tokens, int)
        or num_assistant_tokens < 1
    ):
        raise ValueError(f"num_assistant_tokens must be a positive integer, got {num_assistant_tokens!r}")
    t_folder, t_kind, _ = _layout_folder(target)
    d_folder, d_kind, _ = _layout_folder(draft)
    tv, dv = _vocab_size(t_folder), _vocab_size(d_folder)
    if tv != dv:
        raise ValueError(
            f"target {target} (vocab_size {tv}) and draft {draft} (vocab_size {dv}) must share a tokenizer"
        )

    tok = load_tokenizer(t_folder)

    def encode(prompt: str):
        if chat_template and tok.chat_template:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return tok(text, return_tensors="pt", add_special_tokens=False)
        return tok(prompt, return_tensors="pt")

    lengths = [int(encode(p)["input_ids"].shape[1]) for p in prompts]
    check_generation_fits(t_folder, lengths, max_new_tokens, row_label="prompt")
    target_model = load_causal_lm(target, dtype)
    draft_model = load_causal_lm(draft, dtype)
    gen_cfg = target_model.generation_config
    if num_assistant_tokens is not None:
        draft_model.generation_config.num_assistant_tokens = num_assistant_tokens
        draft_model.generation_config.num_assistant_tokens_schedule = "constant"
        draft_model.generation_config.assistant_confidence_threshold = 0.0
    eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tok.eos_token_id
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id
    )
    # generation_config may carry sampling defaults (temperature/top_p): greedy needs none of them
    gen_kwargs.update(temperature=None, top_p=None, top_k=None)

    t_rec, d_rec = _PassRecorder(), _PassRecorder()
    hooks = [
        target_model.register_forward_pre_hook(t_rec, with_kwargs=True),
        draft_model.register_forward_pre_hook(d_rec, with_kwargs=True),
    ]

    def plain(enc) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            ids = target_model.generate(**enc, **gen_kwargs)
        return ids[0].tolist(), time.perf_counter() - t0

    def assisted(enc) -> tuple[list[int], float, list[_Pass], int]:
        t_rec.passes, d_rec.passes = [], []
        t_rec.active = d_rec.active = True
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                ids = target_model.generate(**enc, assistant_model=draft_model, **gen_kwargs)
            dt = time.perf_counter() - t0
        finally:
            t_rec.active = d_rec.active = False
        return ids[0].tolist(), dt, list(t_rec.passes), len(d_rec.passes)

    rows: list[dict[str, Any]] = []
    try:
        warm = encode(prompts[0])  # first-call overheads stay out of the timings
        warm_kwargs = dict(gen_kwargs, max_new_tokens=min(4, max_new_tokens))
        with torch.inference_mode():
            target_model.generate(**warm, **warm_kwargs)
            target_model.generate(**warm, assistant_model=draft_model, **warm_kwargs)
        bar = tqdm(prompts, desc="speculative decoding", unit="prompt")
        totals = {"acc": 0, "prop": 0}
        for i, prompt in enumerate(bar):
            enc = encode(prompt)
            prompt_len = int(enc["input_ids"].shape[1])
            t_times, a_times = [], []
            for r in range(repeats):
                if (i + r) % 2 == 0:  # interleave the order to cancel drift
                    ref, tt = plain(enc)
                    got, ta, passes, draft_calls = assisted(enc)
                else:
                    got, ta, passes, draft_calls = assisted(enc)
                    ref, tt = plain(enc)
                t_times.append(tt)
                a_times.append(ta)
            walk = _walk_passes(passes, prompt_len, got)
            new_ref, new_got = ref[prompt_len:], got[prompt_len:]
            steps = len(passes)
            acc, prop = sum(walk["accepted"]), sum(walk["proposed"])
            totals["acc"] += acc
            totals["prop"] += prop
            rows.append(
                {
                    "prompt": prompt,
                    "prompt_tokens": prompt_len,
                    "new_tokens": len(new_got),
                    "identical": new_ref == new_got,
                    "first_mismatch": _first_mismatch(new_ref, new_got),
                    "target_steps": steps,
                    "draft_forward_passes": draft_calls,
                    "proposed": prop,
                    "accepted": acc,
                    "accepted_per_pass": walk["accepted"],
                    "proposed_per_pass": walk["proposed"],
                    "count_consistent": walk["consistent"],
                    "acceptance_rate": acc / prop if prop else None,
                    "tokens_per_step": len(new_got) / steps if steps else None,
                    "time_target_s": min(t_times),
                    "time_assisted_s": min(a_times),
                    "completion": tok.decode(new_got, skip_special_tokens=True),
                }
            )
            bar.set_postfix(accept=f"{totals['acc'] / max(totals['prop'], 1):.2f}")
    finally:
        for h in hooks:
            h.remove()

    summary = _summarize(rows)
    result = {
        "target": str(target),
        "draft": str(draft),
        "target_kind": t_kind,
        "draft_kind": d_kind,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "num_assistant_tokens": num_assistant_tokens,
            "num_assistant_tokens_note": None
            if num_assistant_tokens
            else "transformers default: up to 20 draft tokens, confidence-based early stop",
            "repeats": repeats,
            "chat_template": bool(chat_template and tok.chat_template),
            "dtype": dtype,
            "torch_threads": torch.get_num_threads(),
            "prompts": "builtin" if builtin else "custom",
        },
        "summary": summary,
        "warning": TIMING_WARNING,
        "counting": "target forward pre-hook: accepted = draft tokens matching the final output per verify pass",
        "prompts": rows,
    }
    if out is not None:
        write_outputs(result, out)
    return result


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    acc = sum(r["accepted"] for r in rows)
    prop = sum(r["proposed"] for r in rows)
    steps = sum(r["target_steps"] for r in rows)
    new = sum(r["new_tokens"] for r in rows)
    tt = sum(r["time_target_s"] for r in rows)
    ta = sum(r["time_assisted_s"] for r in rows)
    per_prompt = [r["time_target_s"] / r["time_assisted_s"] for r in rows if r["time_assisted_s"] > 0]
    return {
        "num_prompts": len(rows),
        "identical_outputs": sum(r["identical"] for r in rows),
        "all_identical": all(r["identical"] for r in rows),
        "new_tokens": new,
        "target_steps": steps,
        "proposed_draft_tokens": prop,
        "accepted_draft_tokens": acc,
        "acceptance_rate": acc / prop if prop else None,
        "accepted_per_step": acc / steps if steps else None,
        "tokens_per_step": new / steps if steps else None,
        "target_steps_saved": 1.0 - steps / new if new else None,
        "time_target_s": tt,
        "time_assisted_s": ta,
        "speedup": tt / ta if ta > 0 else None,
        "speedup_median_per_prompt": statistics.median(per_prompt) if per_prompt else None,
        "target_tokens_per_s": new / tt if tt > 0 else None,
        "assisted_tokens_per_s": new / ta if ta > 0 else None,
        "counts_consistent": all(r["count_consistent"] for r in rows),
    }


def write_outputs(result: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write ``specdec.json``, ``specdec.md`` and ``specdec.png`` into ``out``."""
    from .cache import write_json_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "specdec.json", result)
    s = result["summary"]

    def f(x: Any, spec: str = ".3f") -> str:
        return "n/a" if x is None else format(x, spec)

    md = [
        "# Speculative decoding",
        "",
        f"Target `{result['target']}`, draft `{result['draft']}`; greedy, "
        f"{result['settings']['max_new_tokens']} new tokens max, {s['num_prompts']} prompts.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| identical greedy outputs | {s['identical_outputs']}/{s['num_prompts']} |",
        f"| acceptance rate (accepted / proposed draft tokens) | {f(s['acceptance_rate'])} |",
        f"| accepted draft tokens per target step | {f(s['accepted_per_step'])} |",
        f"| tokens per target step (target alone: 1) | {f(s['tokens_per_step'])} |",
        f"| target time / assisted time (speedup) | {f(s['speedup'], '.2f')}x |",
        f"| target alone, tokens/s | {f(s['target_tokens_per_s'], '.1f')} |",
        f"| assisted, tokens/s | {f(s['assisted_tokens_per_s'], '.1f')} |",
        "",
        f"> {result['warning']}",
        "",
        "![specdec](specdec.png)",
        "",
    ]
    write_text_atomic(out / "specdec.md", "\n".join(md))
    plot(result, out / "specdec.png")
    return out


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Histogram of accepted draft tokens per target step + per-prompt time bars (Agg PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["prompts"]
    s = result["summary"]
    per_pass = [a for r in rows for a in r["accepted_per_pass"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if per_pass:
        top = max(per_pass)
        ax1.hist(per_pass, bins=range(0, top + 2), align="left", rwidth=0.85, color="tab:blue")
    ax1.set_xlabel("accepted draft tokens in one target step")
    ax1.set_ylabel("target steps")
    ax1.set_title(
        f"acceptance rate {s['acceptance_rate'] or 0:.2f}, {s['tokens_per_step'] or 0:.2f} tokens/step"
    )
    x = range(len(rows))
    ax2.bar([i - 0.2 for i in x], [r["time_target_s"] for r in rows], width=0.4, label="target alone")
    ax2.bar([i + 0.2 for i in x], [r["time_assisted_s"] for r in rows], width=0.4, label="with draft")
    ax2.set_xticks(list(x), [str(i + 1) for i in x])
    ax2.set_xlabel("prompt")
    ax2.set_ylabel("seconds")
    ax2.set_title(f"speedup {s['speedup'] or 0:.2f}x (noisy on shared CPUs)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

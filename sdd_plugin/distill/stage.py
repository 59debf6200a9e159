"""Self-data distillation (SDD, arXiv 2410.09982): the unpruned teacher rewrites every response of a
fine-tuning set in its own words, seeing the instruction and the original response (SDFT
templates, Yang et al. 2402.13669). Rewrites that a checker rejects fall back to the original.

Pipeline of :func:`distill_dataset`:

1. load and validate every row (before any weights load) — :mod:`sdd_plugin.distill.formats`;
2. render each row through the template and the teacher's own chat template (+ assistant prefix);
3. plan fixed, length-sorted batches over *all* rows and generate the batches not in the cache yet;
   finished rows are appended to ``<cache>/distill/<run hash>/rows.jsonl`` (flushed and fsynced),
   so a killed run resumes where it stopped and recomputes only unfinished batches — the same
   batches an uninterrupted run would run, so its output is identical;
4. check every rewrite (truncated / empty / talks about the prompt / wrong final answer) and fall
   back to the original response where rejected;
5. write ``distilled.jsonl`` (the input's schema, response replaced, nothing added), ``rows.jsonl``
   (per row: index, accepted, reason, num_tokens), ``distill_report.json`` and ``distill_report.md``.

Choices: the distilled response is the generated continuation only (the assistant prefix such as
"Great! Let's think step by step." is not part of it, as in SDFT); an accepted math rewrite gets the
dataset's final-answer line appended when it lacks one (``#### n`` for GSM8K, ``\\boxed{}`` for
OpenMathInstruct), so downstream answer parsers keep working. A generation that hit
``max_new_tokens`` without EOS is rejected as ``truncated``. The generation cache does not depend
on the checker (checks are cheap and re-run every time).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cache import cache_dir as default_cache_dir
from ..cache import fingerprint, stable_hash, write_json_atomic, write_text_atomic
from ..data.sources import describe_source
from ..interfaces import GenerationResult, GenerationSettings
from .acceptance import acceptance_markdown, try_summary
from .formats import (
    FORMAT_FOR_AXOLOTL_TYPE,
    Example,
    drop_empty_responses,
    format_for_axolotl_type,
    get_format,
    load_rows,
    read_examples,
)
from .kd import KD_NAME, MeterTopK, pack_logprobs, require_chat_template, teacher_of_record, write_kd_set
from .outputs import REPORT_NAME, Staging, holds_out
from .resume import Lap, NllCache, generation_totals, once
from .templates import render_prompt

log = logging.getLogger(__name__)

__all__ = [
    "DistillResult",
    "FORMAT_FOR_AXOLOTL_TYPE",
    "distill_dataset",
    "format_for_axolotl_type",
    "render_prompt",
    "response_nll",
]

REPORT_MD_NAME = "distill_report.md"
ROWS_NAME = "rows.jsonl"


@dataclass
class DistillResult:
    """What :func:`distill_dataset` produced."""

    output_path: Path
    """The distilled rows (jsonl, the input's schema with the response replaced)."""
    report: dict[str, Any]
    report_path: Path
    rows_path: Path
    """Per-row side file: index, accepted, reason, num_tokens."""
    rows: list[dict] = field(default_factory=list, repr=False)
    """The distilled rows themselves."""
    kd_path: Path | None = None
    """The KD-ready set (``kd.jsonl``, axolotl's KD layout) when ``kd_top_k`` asked for it."""


# --------------------------------------------------------------------------------------- cache


class RowCache:
    """Append-only ``rows.jsonl``: one JSON line per finished row, fsynced; torn lines ignored."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "rows.jsonl"
        self.records: dict[str, dict] = {}
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by a kill
                    if isinstance(rec, dict) and isinstance(rec.get("key"), str) and "text" in rec:
                        self.records.setdefault(rec["key"], rec)
        self._file = None

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, key: str, result: GenerationResult, seconds: float | None = None) -> None:
        """Append one finished row and make it durable (``seconds``: its share of the generation time)."""
        rec = {"key": key, "text": result.text, "num_tokens": result.num_tokens, "finished": result.finished}
        if seconds is not None:
            rec["seconds"] = round(seconds, 4)
        if result.logprobs is not None:
            rec["logprobs"] = pack_logprobs(result.logprobs)
        if self._file is None:
            needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_newline()
            self._file = open(self.path, "a", encoding="utf-8")
            if needs_newline:
                self._file.write("\n")
        self._file.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.setdefault(key, rec)

    def _ends_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ------------------------------------------------------------------------------------ NLL meter


def response_nll(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 4,
    max_response_tokens: int = 512,
    show_progress: bool = False,
    on_logits: Callable[[int, Any, list[int]], None] | None = None,
    cache: NllCache | None = None,
) -> tuple[float, list[tuple[float, int]]]:
    """Teacher's mean per-token NLL of ``responses`` given ``prompts`` (rendered strings).

    ``cache``: rows scored before are taken from it, new ones added (one durable line each);
    ``model`` may be a loader function, called only when some row is to be scored.
    Returns ``(token-weighted mean, [(sum NLL, tokens) per row])``. Batched with left padding, only
    the response positions' logits are computed (``logits_to_keep``). ``on_logits(row, logits,
    response_ids)``, when given, receives each scored row's logits predicting every response token
    and then the token after the response (``[n + 1, vocab]``).
    """
    import torch
    from tqdm.auto import tqdm

    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([r or "" for r in responses], add_special_tokens=False)["input_ids"]
    r_ids = [ids[:max_response_tokens] for ids in r_ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(prompts)), key=lambda i: -(len(p_ids[i]) + len(r_ids[i])))
    per_row: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    order = cache.pending(order, prompts, r_ids, per_row) if cache is not None else order
    if callable(model) and not hasattr(model, "parameters"):
        model = model() if order else None
    bar = tqdm(total=len(order), desc="nll", unit="row", disable=not show_progress, dynamic_ncols=True)
    device = next(model.parameters()).device if order else None
    for start in range(0, len(order), batch_size):
        batch = [i for i in order[start : start + batch_size] if r_ids[i]]
        bar.update(min(batch_size, len(order) - start))
        if not batch:
            continue
        seqs = [p_ids[i] + r_ids[i] for i in batch]
        width = max(len(s) for s in seqs)
        keep = max(len(r_ids[i]) for i in batch) + 1
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=keep,
            ).logits.float()
        for row, i in enumerate(batch):
            n = len(r_ids[i])
            # logits[-k] predicts the token at position width-k+1; the response is the last n tokens
            pred = logits[row, keep - n - 1 : keep - 1]
            target = torch.tensor(r_ids[i], device=pred.device)
            nll = torch.nn.functional.cross_entropy(pred, target, reduction="sum").item()
            per_row[i] = (nll, n)
            if cache is not None:
                cache.add(i, nll, n)
            if on_logits is not None:
                on_logits(i, logits[row, keep - n - 1 :], r_ids[i])
    bar.close()
    total = sum(s for s, _ in per_row)
    count = sum(n for _, n in per_row)
    return (total / count if count else float("nan")), per_row


def _mean_nll(per_row: list[tuple[float, int]], rows: list[int] | None = None) -> float | None:
    pick = per_row if rows is None else [per_row[i] for i in rows]
    count = sum(n for _, n in pick)
    return round(sum(s for s, _ in pick) / count, 4) if count else None


# -------------------------------------------------------------------------------------- distill


@holds_out
def distill_dataset(
    teacher: str | os.PathLike = "smollm2-135m-instruct",
    data: str | os.PathLike | Sequence[dict] = "",
    format: str = "gsm8k",
    out: str | os.PathLike = "distilled",
    template: str | None = None,
    checker: str | None = None,
    limit: int | None = None,
    split: str = "train",
    settings: GenerationSettings | None = None,
    backend: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    measure_nll: bool = True,
    show_progress: bool = True,
    allow_truncated: bool = False,
    retries: int = 0,
    ray: bool | str = False,
    ray_workers: int | None = None,
    kd_top_k: int = 0,
    overwrite: bool = True,
    strict: bool = False,
) -> DistillResult:
    """Self-distill a fine-tuning set with ``teacher`` and write it in the input's schema.

    ``out`` is checked and locked before any work and the outputs appear together at the end
    (:mod:`sdd_plugin.distill.outputs`); an existing ``out`` is replaced only with ``overwrite``.
    Rows with an empty response are skipped with a warning (an error with ``strict``).

    ``data`` is a local file/folder, a hub id or a list of rows; ``format`` one of
    :data:`sdd_plugin.distill.formats.FORMATS`; ``out`` a folder (``distilled.jsonl`` and the reports go
    there) or a ``.jsonl`` file (reports beside it). ``template``/``checker`` default by format
    (gsm8k/openmath -> ``math``, else ``general``). Resumes from and reuses the cache under
    ``cache_dir`` (default :func:`sdd_plugin.cache.cache_dir`). Rewrites cut off at
    ``max_new_tokens`` are rejected as ``truncated`` unless ``allow_truncated``.

    ``retries`` > 0 re-generates each rejected row up to that many times with sampling
    (``settings``' temperature/top-p, seed + attempt) and keeps the first rewrite that passes the
    checker; each attempt has its own resumable cache. A row that never passes falls back to the
    original and is counted under its first attempt's reason. The report's ``acceptance_by_try``
    and ``fell_back`` count, per try, the rows tried, accepted and rejected by reason.

    ``backend`` ``auto`` is ``vllm`` on CUDA when vLLM is installed, else ``hf``. ``ray`` spreads the
    batches over a Ray cluster (True = a local Ray instance, else its address; ``ray_workers`` actors,
    see :mod:`sdd_plugin.generation.ray_runner`); rows and cache are the same as without it.

    ``kd_top_k`` > 0 (SDD + logit distillation) also writes ``kd.jsonl`` beside the output: the
    distilled set as chat rows with the teacher's top-``kd_top_k`` log-probs at every token, in the
    layout of axolotl's KD dataset type (:mod:`sdd_plugin.distill.kd`). An accepted rewrite's
    come from its generation pass (kept in the row cache, so they resume with the rewrites), a
    kept original's from the NLL meter's pass over it. The generated text is the same as without
    it; the row cache is a separate one. The report's ``kd`` gives the bytes per row.
    """
    from ..generation.backend_args import output_settings
    from ..generation.selection import make_backend
    from ..models import check_generation_fits, load_tokenizer, resolve_model
    from ..plugins import get_checker, get_template

    t0 = time.perf_counter()
    spec = get_format(format)
    if data is None or (isinstance(data, (str, os.PathLike)) and not str(data)):
        raise ValueError("data: give a dataset file, folder, hub id or a list of rows")
    settings = settings or GenerationSettings()
    if settings.batch_size < 1 or settings.max_new_tokens < 1:
        raise ValueError("settings: batch_size and max_new_tokens must be >= 1")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    template_obj = get_template(template or spec.default_template)
    checker_obj = get_checker(checker or spec.default_checker)
    backend_obj = make_backend(backend, ray=ray, ray_workers=ray_workers)
    source = describe_source(data)
    rows = load_rows(data, spec.name, split=split, limit=limit, validate=False)
    examples: list[Example] = read_examples(rows, spec.name, source)  # errors before weights load
    rows, examples, row_numbers, skipped = drop_empty_responses(rows, examples, source, strict)
    staging = Staging(out)  # every output is written here, then published in place
    out_dir, out_path = staging.dir, staging.path

    teacher_path = resolve_model(teacher)
    tok = load_tokenizer(teacher_path)
    if kd_top_k:
        require_chat_template(tok)
        settings = replace(settings, extra={**settings.extra, "logprobs_top_k": kd_top_k})
    prompts = []
    for ex in examples:
        messages, prefix = template_obj.render(ex.instruction, ex.prompt_reference)
        prompts.append(render_prompt(tok, messages, prefix))

    settings_dict = asdict(settings)
    run_id = {  # engine sizes (KV cache, memory share) are not part of it: a resume may change them
        "teacher": fingerprint(teacher_path),
        "backend": backend_obj.name,
        "settings": output_settings(settings_dict),
    }
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    keys = [stable_hash({"prompt": p, "template": template_obj.name}, 24) for p in prompts]
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    check_generation_fits(
        teacher_path, lengths, settings.max_new_tokens, "max_new_tokens", "row", row_numbers
    )
    stats: dict[str, Any] = {"generated_rows": 0, "generated_tokens": 0, "seconds": 0.0, "cached_rows": 0}

    def generate_pass(attempt: int, pass_settings: GenerationSettings, subset: list[int]) -> RowCache:
        """Generate the rows ``subset`` not cached yet for this attempt; returns the attempt's cache.

        Fixed batches over the whole subset; a batch is redone whole unless every row of it is
        cached, so a resumed pass runs exactly the batches an uninterrupted one would."""
        from ..generation.hf.backend import plan_batches

        pass_id = run_id
        if attempt:
            pass_id = dict(run_id, retry=attempt, settings=output_settings(asdict(pass_settings)))
        cache = RowCache(root / "distill" / stable_hash(pass_id))
        write_json_atomic(cache.folder / "run.json", pass_id)
        batches = [
            [subset[j] for j in b]
            for b in plan_batches([lengths[i] for i in subset], pass_settings.batch_size)
        ]
        todo = [i for b in batches if not all(keys[i] in cache for i in b) for i in b]
        if attempt == 0:
            stats["cached_rows"] = len(subset) - len(todo)
        if not todo:
            return cache
        log.info(
            "distilling %d rows with %s (attempt %d; %d of %d cached, batches of %d)",
            len(todo),
            teacher,
            attempt,
            len(subset) - len(todo),
            len(subset),
            pass_settings.batch_size,
        )

        def on_result(res: GenerationResult) -> None:
            if kd_top_k and res.logprobs is None:
                raise RuntimeError(f"the {backend_obj.name} backend returned no top-k log-probs (kd_top_k)")
            stats["generated_tokens"] += res.num_tokens
            cache.add(keys[todo[res.index]], res, seconds=lap())

        if hasattr(backend_obj, "load"):
            backend_obj.load(str(teacher_path), pass_settings)  # load outside the throughput timing
        g0, lap = time.perf_counter(), Lap()
        try:
            builtin = backend_obj.name in ("hf", "vllm")
            kwargs = {"show_progress": show_progress} if builtin else {}
            if attempt and builtin:
                kwargs["desc"] = f"distill retry {attempt}"
            backend_obj.generate(
                str(teacher_path), [prompts[i] for i in todo], pass_settings, on_result, **kwargs
            )
        finally:
            cache.close()
        stats["seconds"] += time.perf_counter() - g0
        stats["generated_rows"] += len(todo)
        missing = [i for i in todo if keys[i] not in cache]
        if missing:
            raise RuntimeError(f"the {backend_obj.name} backend returned no result for rows {missing[:10]}")
        return cache

    def check(rec: dict, ex: Example) -> str | None:
        reason = None if rec.get("finished", True) or allow_truncated else "truncated"
        return reason if reason is not None else checker_obj.check(rec["text"], ex.reference, ex.expected)

    # Pass 0 (the configured settings, greedy by default), then sampled retries of rejected rows.
    first = generate_pass(0, settings, list(range(len(rows))))
    chosen = [first.records[k] for k in keys]
    used = list(chosen)  # every generation the output stands on
    first_reasons = [check(rec, ex) for rec, ex in zip(chosen, examples)]
    status = list(first_reasons)
    attempt_of = [0] * len(rows)
    by_try = [try_summary(0, first_reasons)]
    for attempt in range(1, retries + 1):
        rejected = [i for i, reason in enumerate(status) if reason is not None]
        if not rejected:
            break
        retry_settings = replace(settings, do_sample=True, seed=settings.seed + attempt)
        retry_cache = generate_pass(attempt, retry_settings, rejected)
        try_reasons = []
        for i in rejected:
            rec = retry_cache.records[keys[i]]
            used.append(rec)
            try_reasons.append(check(rec, examples[i]))
            if try_reasons[-1] is None:
                chosen[i], status[i], attempt_of[i] = rec, None, attempt
        by_try.append(try_summary(attempt, try_reasons))

    # Checks and fallback.
    out_rows, side, responses, reasons = [], [], [], Counter()
    accepted_idx = []
    for i, (row, ex) in enumerate(zip(rows, examples)):
        rec = chosen[i]
        if status[i] is None:
            text = rec["text"]
            response = spec.finalize(text, ex) if spec.finalize else text
            accepted_idx.append(i)
        else:
            response = ex.reference
            reasons[first_reasons[i]] += 1
        responses.append(response)
        out_rows.append(spec.with_response(row, response))
        accepted = status[i] is None
        entry = {
            "index": i,
            "accepted": accepted,
            "reason": None if accepted else first_reasons[i],
            "num_tokens": rec["num_tokens"],
        }
        if retries:
            entry["attempt"] = attempt_of[i] if accepted else None
        side.append(entry)

    # Distribution-shift meter: teacher NLL of original vs distilled responses, plain prompt.
    nll: dict[str, Any] = {}
    kept = [i for i in range(len(rows)) if status[i] is not None and examples[i].reference]
    meter = MeterTopK(kd_top_k, kept) if kd_top_k else None  # KD targets of the kept originals
    plain = [render_prompt(tok, ex.messages) for ex in examples]
    bs = max(1, min(settings.batch_size, 4))

    def teacher_model():
        load = getattr(backend_obj, "load", None)
        if load is not None:
            return load(str(teacher_path), settings)[0]
        from ..models import load_model

        return load_model(teacher_path)[0]

    if measure_nll and rows:
        model, nll_cache = once(teacher_model), NllCache(first.folder)  # loaded if a row is not cached
        _, orig = response_nll(
            model,
            tok,
            plain,
            [ex.reference for ex in examples],
            bs,
            show_progress=show_progress,
            on_logits=meter,
            cache=None if meter is not None else nll_cache,
        )
        _, dist = response_nll(model, tok, plain, responses, bs, show_progress=show_progress, cache=nll_cache)
        nll_cache.close()
        nll = {
            "nll_original": _mean_nll(orig),
            "nll_distilled": _mean_nll(dist),
            "nll_original_accepted": _mean_nll(orig, accepted_idx),
            "nll_distilled_accepted": _mean_nll(dist, accepted_idx),
        }
        if nll["nll_original"] is not None and nll["nll_distilled"] is not None:
            nll["nll_delta"] = round(nll["nll_distilled"] - nll["nll_original"], 4)

    kd_report = None
    if meter is not None:
        missing = [i for i in kept if i not in meter.teacher]  # not scored above
        if missing:
            response_nll(
                teacher_model(),
                tok,
                [plain[i] for i in missing],
                [examples[i].reference for i in missing],
                bs,
                show_progress=show_progress,
                on_logits=lambda j, logits, ids: meter(missing[j], logits, ids),
            )
        conversations = (
            (
                ex.messages + [{"role": "assistant", "content": responses[i]}],
                teacher_of_record(chosen[i]) if status[i] is None else meter.teacher.get(i),
            )
            for i, ex in enumerate(examples)
        )
        kd_report = write_kd_set(out_dir / KD_NAME, tok, conversations, kd_top_k)

    n = len(rows)
    num_tokens = [s["num_tokens"] for s in side]
    report: dict[str, Any] = {
        "rows": n,
        "skipped_empty_responses": len(skipped),
        "skipped_rows": skipped,
        "accepted": len(accepted_idx),
        "acceptance_rate": round(len(accepted_idx) / n, 4) if n else None,
        "fallbacks": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "mean_generated_tokens": round(sum(num_tokens) / n, 2) if n else None,
        **generation_totals(used),  # over every invocation of the run
        "cached_rows": stats["cached_rows"],
        "this_invocation": {k: round(v, 2) for k, v in stats.items() if k != "cached_rows"},
        "retries": retries,
        "accepted_on_retry": sum(1 for i in accepted_idx if attempt_of[i] > 0),
        "acceptance_by_try": by_try,
        "fell_back": n - len(accepted_idx),
        "nll_original": None,
        "nll_distilled": None,
        **nll,
        "teacher": str(teacher),
        "teacher_path": str(teacher_path),
        "template": template_obj.name,
        "checker": checker_obj.name,
        "backend": backend_obj.name,
        "format": spec.name,
        "source": source,
        "split": split,
        "limit": limit,
        "settings": settings_dict,
        "allow_truncated": allow_truncated,
        "output": str(out_path),
        "cache": str(first.folder),
        "seconds": round(time.perf_counter() - t0, 2),
    }

    if kd_report is not None:
        report["kd"] = kd_report

    report = staging.final(report)  # the paths it records are the published ones
    write_text_atomic(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows))
    rows_path = out_dir / ROWS_NAME
    write_text_atomic(rows_path, "".join(json.dumps(s) + "\n" for s in side))
    report_path = out_dir / REPORT_NAME
    write_json_atomic(report_path, report)
    write_text_atomic(out_dir / REPORT_MD_NAME, report_markdown(report))
    staging.publish()
    out_path, report_path, rows_path = (staging.final(p) for p in (out_path, report_path, rows_path))
    kd_path = Path(kd_report["path"]) if kd_report else None
    return DistillResult(out_path, report, report_path, rows_path, out_rows, kd_path)


def report_markdown(report: dict[str, Any]) -> str:
    """A short Markdown summary of a distillation report."""

    def fmt(v: Any) -> str:
        return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = [
        "# Self-data distillation report",
        "",
        f"Teacher `{report['teacher']}`, template `{report['template']}`, checker `{report['checker']}`, "
        f"format `{report['format']}`, source `{report['source']}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "rows",
        "accepted",
        "acceptance_rate",
        "mean_generated_tokens",
        "generated_rows",
        "cached_rows",
        "tokens_per_s",
        "rows_per_s",
        "nll_original",
        "nll_distilled",
        "nll_delta",
    ):
        if key in report:
            lines.append(f"| {key} | {fmt(report[key])} |")
    lines += acceptance_markdown(report)
    lines += ["", "## Fallbacks (original response kept)", ""]
    if report["fallbacks"]:
        lines += ["| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in report["fallbacks"].items()]
    else:
        lines.append("none")
    if report.get("kd"):
        kd = report["kd"]
        lines += [
            "",
            f"KD set (top-{kd['top_k']} teacher log-probs, axolotl `{kd['axolotl_type']}`): `{kd['path']}`, "
            f"{kd['bytes_per_row']} bytes/row; {fmt(kd['teacher_position_share'])} of the positions carry "
            f"the teacher's distribution, the rest a one-hot target.",
        ]
    s = report["settings"]
    lines += [
        "",
        f"Settings: max_new_tokens={s['max_new_tokens']}, batch_size={s['batch_size']}, "
        f"do_sample={s['do_sample']}.",
        "",
    ]
    return "\n".join(lines)

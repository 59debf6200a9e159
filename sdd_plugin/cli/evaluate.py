"""``sdd eval``: lm-eval scores on local data, and the recovery table against a baseline."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from ..models import DTYPES
from . import UserError

HELP = "evaluate models with lm-eval (local sdd_* tasks or stock hub tasks) and tabulate recovery"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sdd eval``."""
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="model to evaluate: embedded name, HF folder, hub id or LoRA adapter folder (repeatable)",
    )
    parser.add_argument(
        "--tasks", default=None, help="comma list, e.g. sdd_arc_easy,sdd_hellaswag or stock arc_easy"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="task set: openllm (local), openllm-hub (stock), quick, synth, ppl (bits per byte)",
    )
    parser.add_argument("--limit", type=float, default=None, help="docs per task (per subject for sdd_mmlu)")
    parser.add_argument("--shots", default=None, help="few-shot override: K for all, or task=k,task=k")
    parser.add_argument(
        "--baseline",
        default=None,
        help="baseline for the recovery table: a model (evaluated with the same settings) or an "
        "eval_results.json / folder holding one",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="RUN",
        help="tabulate existing runs (eval_results.json or their folders) against --baseline, no evaluation",
    )
    parser.add_argument("--chat-template", action="store_true", help="apply the model's chat template")
    parser.add_argument(
        "--fewshot-as-multiturn", action="store_true", help="with --chat-template: few-shot examples as turns"
    )
    parser.add_argument(
        "--data-root", default=None, help="local data root (default $SDD_DATA_ROOT or ../shared/data)"
    )
    parser.add_argument("--batch-size", default="8", help="lm-eval batch size (int or 'auto')")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights dtype (bfloat16 is faster on CPUs with AVX512-BF16; compare models at one dtype)",
    )
    parser.add_argument("--no-cache", action="store_true", help="ignore cached per-task results")
    parser.add_argument("--out", required=True, help="output folder (written whole at the end)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def _slug(label: str) -> str:
    name = Path(label).name or label
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _as_results(x: str):
    """An eval_results dict if ``x`` is a results file or a folder with one, else None."""
    from ..evaluate import load_results

    p = Path(x)
    if (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / "eval_results.json").is_file()):
        return load_results(p)
    return None


def _print_table(report: dict) -> None:
    from ..evaluate import format_score, higher_is_better, metric_label

    print(f"{report['model']}:")
    for t, r in report["tasks"].items():
        hib = higher_is_better(dict(r, task=t))  # bits per byte: a plain number, lower is better
        print(
            f"  {t:<22} {metric_label(r['metric'], hib):<12} {format_score(r['value'], hib):>7} ± "
            f"{format_score(r['stderr'], hib)}  (n={r['n']}, shots={r['shots']})"
        )


def _check_inputs_outside(out: Path, inputs: list[str]) -> None:
    """--out is replaced whole: refuse when it holds a run being read (--compare, --baseline)."""
    for x in inputs:
        p = Path(x).expanduser().resolve()
        if p.exists() and (p == out.resolve() or out.resolve() in p.parents):
            raise UserError(f"--out {out} holds {x}, which this command reads; choose another --out")


def run(args: argparse.Namespace) -> int:
    """Evaluate, then (with --baseline) write recovery.json/.md/.png."""
    from ..cache import check_output, output_dir
    from ..evaluate import (
        evaluate,
        expand_tasks,
        load_results,
        parse_shots,
        recovery_markdown,
        recovery_table,
        validate_tasks,
        write_recovery,
    )

    if not getattr(args, "verbose", False):  # lm-eval logs every request batch at INFO
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    out = check_output(args.out, overwrite=args.overwrite)
    _check_inputs_outside(out, list(args.compare or []) + ([args.baseline] if args.baseline else []))
    batch = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    if args.compare:
        if args.model:
            raise UserError("--compare tabulates existing runs; do not combine it with --model")
        if not args.baseline:
            raise UserError("--compare needs --baseline (an eval_results.json or a folder holding one)")
        base = _as_results(args.baseline)
        if base is None:
            raise UserError(
                f"--baseline {args.baseline!r} is not an eval_results.json or a folder holding one"
            )
        runs = [load_results(r) for r in args.compare]
        table = recovery_table(runs, base)
        with output_dir(out, overwrite=args.overwrite) as tmp:
            paths = write_recovery(table, tmp)
        print(recovery_markdown(table))
        print(f"wrote {', '.join(str(out / paths[k].name) for k in ('md', 'json', 'png'))}")
        return 0

    if not args.model:
        raise UserError("give at least one --model (or --compare RUN ... --baseline RUN0)")
    tasks = expand_tasks(args.tasks, args.preset)
    validate_tasks(tasks)
    shots = parse_shots(args.shots)
    limit = args.limit
    if limit is not None and float(limit).is_integer():
        limit = int(limit)
    common = dict(
        tasks=tasks,
        limit=limit,
        num_fewshot=shots,
        batch_size=batch,
        apply_chat_template=args.chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        data_root=args.data_root,
        seed=args.seed,
        dtype=args.dtype,
        use_cache=not args.no_cache,
    )
    base_results = _as_results(args.baseline) if args.baseline else None
    single = len(args.model) == 1 and not args.baseline
    reports = []
    used: set[str] = set()
    with output_dir(out, overwrite=args.overwrite) as tmp:  # --out appears whole, at the end
        for m in args.model:
            slug = _slug(m)
            while slug in used or slug == "baseline":
                slug += "_"
            used.add(slug)
            rep = evaluate(m, out=tmp if single else tmp / slug, **common)
            _print_table(rep)
            reports.append(rep)
        if args.baseline:
            if base_results is None:
                base_results = evaluate(args.baseline, out=tmp / "baseline", **common)
                _print_table(base_results)
            table = recovery_table(reports, base_results)
            paths = write_recovery(table, tmp)
    if args.baseline:
        print(recovery_markdown(table))
        print(f"wrote {', '.join(str(out / paths[k].name) for k in ('md', 'json', 'png'))}")
    else:
        print(f"wrote {out / 'eval_results.json' if single else out}")
    return 0

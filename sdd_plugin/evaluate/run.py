"""Evaluation with lm-eval (EleutherAI harness) on local data, and the recovery table.

The ``sdd_*`` tasks mirror lm-eval's stock tasks (prompts, metrics, filters) but read the local
files under the data root (``../shared/data`` layout, see ``sdd_plugin/tasks/``). Their YAMLs are
rendered at run time into a cache folder together with the data converted to the HF schemas, and
handed to ``lm_eval.tasks.TaskManager(include_path=...)``. Stock task names (``arc_easy``,
``hellaswag``, ...) pass straight through to lm-eval (they need the hub).

Chance levels are computed over the evaluated docs: mean ``1/#choices`` for multiple choice,
mean ``#true/#choices`` for TruthfulQA mc2 (the expected mc2 of a uniform model), 0 for generation,
None for perplexity (``loglikelihood_rolling``) tasks.

Perplexity tasks (``sdd_synth_ppl``, ``sdd_wikitext``) report bits per byte, where lower is better
(``TaskSpec.higher_is_better``; stored per result as ``higher_is_better``). Their plain recovery is
``baseline / score``; they are left out of the averaged score/recovery over the accuracy tasks and
get their own average (``lower_is_better_recovery``), see :func:`recovery_table`.

``sdd_mmlu`` is a group of 57 subject tasks (``sdd_mmlu_<subject>``) with the stock first-5-of-dev
few-shot examples; ``limit`` applies per subject, the group score is weighted by subject size.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from ..cache import cache_dir, file_hash, stable_hash, write_json_atomic, write_text_atomic
from ..models import DTYPES, warn_if_slow_dtype

log = logging.getLogger(__name__)

#: bump when the conversion of local data or the rendered YAMLs change (invalidates caches)
PREP_VERSION = 1
PLACEHOLDER = "@SDD_TASK_DATA@"


@dataclass(frozen=True)
class TaskSpec:
    """A local ``sdd_*`` task: its primary metric, default shots and the data it needs."""

    name: str
    metric: str  # lm-eval metric name of the primary metric
    shots: int  # default number of few-shot examples (OpenLLM leaderboard v1 settings)
    sources: tuple[str, ...]  # files or folders relative to the data root ("" = embedded data)
    label: str | None = None  # display name of the metric when it differs (mc2)
    filter: str = "none"
    higher_is_better: bool = True  # False for perplexity-style metrics (bits_per_byte)

    @property
    def metric_key(self) -> str:
        """The key lm-eval uses in its results (``metric,filter``)."""
        return f"{self.metric},{self.filter}"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "sdd_arc_easy",
            "acc",
            0,
            ("arc/ARC-Easy-Train.jsonl", "arc/ARC-Easy-Dev.jsonl", "arc/ARC-Easy-Test.jsonl"),
        ),
        TaskSpec(
            "sdd_arc_challenge",
            "acc_norm",
            25,
            ("arc/ARC-Challenge-Train.jsonl", "arc/ARC-Challenge-Dev.jsonl", "arc/ARC-Challenge-Test.jsonl"),
        ),
        TaskSpec("sdd_hellaswag", "acc_norm", 10, ("hellaswag/hellaswag_val_full.txt.gz",)),
        TaskSpec("sdd_truthfulqa_mc2", "acc", 0, ("truthfulqa/mc_task.json",), label="mc2"),
        TaskSpec("sdd_mmlu", "acc", 5, ("mmlu/test", "mmlu/dev")),
        TaskSpec("sdd_winogrande", "acc", 5, ("winogrande/dev.jsonl",)),
        TaskSpec(
            "sdd_gsm8k", "exact_match", 5, ("gsm8k/train.jsonl", "gsm8k/test.jsonl"), filter="strict-match"
        ),
        TaskSpec("sdd_synth_mc", "acc", 0, ()),
        TaskSpec("sdd_synth_math", "exact_match", 5, (), filter="strict-match"),
        TaskSpec("sdd_synth_ppl", "bits_per_byte", 0, (), higher_is_better=False),
        TaskSpec("sdd_wikitext", "bits_per_byte", 0, ("wikitext2/wiki.test.raw",), higher_is_better=False),
    ]
}

#: metrics where lower is better (lm-eval's perplexity family); used for results without the flag
LOWER_IS_BETTER_METRICS = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity"})


def higher_is_better(task_or_result: str | dict) -> bool:
    """Whether a larger score is better: for a task name, a metric name, or one result/table row.

    A row's own ``higher_is_better`` key wins; otherwise the task's :class:`TaskSpec`, else the
    metric name (``bits_per_byte`` and the perplexities are lower-is-better).
    """
    if isinstance(task_or_result, dict):
        flag = task_or_result.get("higher_is_better")
        if flag is not None:
            return bool(flag)
        task = task_or_result.get("task")
        if task in TASKS:
            return TASKS[task].higher_is_better
        return str(task_or_result.get("metric")) not in LOWER_IS_BETTER_METRICS
    if task_or_result in TASKS:
        return TASKS[task_or_result].higher_is_better
    metric = STOCK_METRICS.get(task_or_result, (task_or_result, ""))[0]
    return metric not in LOWER_IS_BETTER_METRICS


#: primary metrics of stock lm-eval tasks (leaderboard v1 choices); others fall back to acc/exact_match
STOCK_METRICS: dict[str, tuple[str, str]] = {
    "arc_easy": ("acc", "none"),
    "arc_challenge": ("acc_norm", "none"),
    "hellaswag": ("acc_norm", "none"),
    "truthfulqa_mc2": ("acc", "none"),
    "mmlu": ("acc", "none"),
    "winogrande": ("acc", "none"),
    "gsm8k": ("exact_match", "strict-match"),
    "wikitext": ("bits_per_byte", "none"),
}

PRESETS: dict[str, list[str]] = {
    "openllm": [
        "sdd_arc_challenge",
        "sdd_hellaswag",
        "sdd_truthfulqa_mc2",
        "sdd_mmlu",
        "sdd_winogrande",
        "sdd_gsm8k",
        "sdd_arc_easy",
    ],
    "openllm-hub": [
        "arc_challenge",
        "hellaswag",
        "truthfulqa_mc2",
        "mmlu",
        "winogrande",
        "gsm8k",
        "arc_easy",
    ],
    "quick": ["sdd_arc_easy", "sdd_hellaswag"],
    "synth": ["sdd_synth_mc", "sdd_synth_math", "sdd_synth_ppl"],
    "ppl": ["sdd_synth_ppl", "sdd_wikitext"],
}

#: default shots of the stock tasks in the openllm-hub preset (None = the task's own default)
STOCK_SHOTS: dict[str, int] = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "truthfulqa_mc2": 0,
    "mmlu": 5,
    "winogrande": 5,
    "gsm8k": 5,
    "arc_easy": 0,
}

SYNTH_TEST_ROWS = 500
SYNTH_TRAIN_ROWS = 100


# ---------------------------------------------------------------------------------------------
# data root and task preparation
# ---------------------------------------------------------------------------------------------


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """``data_root``, else ``$SDD_DATA_ROOT``, else ``../shared/data`` beside cwd or the repo."""
    if data_root is not None:
        path = Path(data_root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data root {path} (--data-root) does not exist")
        return path.resolve()
    env = os.environ.get("SDD_DATA_ROOT")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data root {path} (from $SDD_DATA_ROOT) does not exist")
        return path.resolve()
    candidates = [Path.cwd().parent / "shared" / "data", _repo_root().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise FileNotFoundError(
        "no data root found: pass --data-root DIR or set $SDD_DATA_ROOT (looked for "
        + ", ".join(str(c) for c in candidates)
        + "); the sdd_synth_* tasks (--preset synth) need no data"
    )


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: invalid JSON: {exc}") from exc
    return rows


def _write_jsonl(rows: Iterable[dict], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _prep_arc(root: Path, out: Path, variant: str) -> None:
    name = {"Easy": "arc_easy", "Challenge": "arc_challenge"}[variant]
    for src_split, split in (("Train", "train"), ("Dev", "validation"), ("Test", "test")):
        src = root / "arc" / f"ARC-{variant}-{src_split}.jsonl"
        rows = []
        for i, r in enumerate(_read_jsonl(src), 1):
            try:
                choices = r["question"]["choices"]
                labels = [str(c["label"]) for c in choices]
                key = str(r["answerKey"])
                if key not in labels:
                    raise ValueError(f"answerKey {key!r} is not one of the choice labels {labels}")
                rows.append(
                    {
                        "id": r["id"],
                        "question": r["question"]["stem"],
                        "choices": {"text": [c["text"] for c in choices], "label": labels},
                        "answerKey": key,
                    }
                )
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{src}: row {i}: missing key {exc}") from exc
            except ValueError as exc:
                raise ValueError(f"{src}: row {i}: {exc}") from exc
        _write_jsonl(rows, out / f"{name}.{split}.jsonl")


def _prep_hellaswag(root: Path, out: Path) -> None:
    src = root / "hellaswag" / "hellaswag_val_full.txt.gz"
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) % 6:
        raise ValueError(f"{src}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    rows = []
    for i in range(0, len(lines), 6):
        ctx, label, *endings = lines[i : i + 6]
        if label.strip() not in {"0", "1", "2", "3"}:
            raise ValueError(f"{src}: line {i + 2}: label {label!r} is not 0-3")
        rows.append(
            {
                "ind": i // 6,
                "query": ctx.strip(),
                "choices": [e.strip() for e in endings],
                "label": int(label),
            }
        )
    _write_jsonl(rows, out / "hellaswag.validation.jsonl")


def _prep_truthfulqa(root: Path, out: Path) -> None:
    src = root / "truthfulqa" / "mc_task.json"
    data = json.loads(src.read_text(encoding="utf-8"))
    rows = []
    for i, r in enumerate(data):
        try:
            row = {"question": r["question"]}
            for key in ("mc1_targets", "mc2_targets"):
                row[key] = {"choices": list(r[key]), "labels": [int(v) for v in r[key].values()]}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{src}: item {i}: missing or malformed key {exc}") from exc
        rows.append(row)
    _write_jsonl(rows, out / "truthfulqa.validation.jsonl")


def _prep_winogrande(root: Path, out: Path) -> None:
    src = root / "winogrande" / "dev.jsonl"
    rows = _read_jsonl(src)
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("sentence", "option1", "option2", "answer") if k not in r]
        if missing or "_" not in r.get("sentence", "") or str(r.get("answer")) not in {"1", "2"}:
            raise ValueError(f"{src}: row {i}: needs sentence (with _), option1, option2, answer 1/2")
        r["answer"] = str(r["answer"])
    _write_jsonl(rows, out / "winogrande.validation.jsonl")


def mmlu_subjects(root: Path) -> list[str]:
    """Subjects with a ``<subject>_test.csv`` under ``root/mmlu/test``."""
    return sorted(p.name[: -len("_test.csv")] for p in (root / "mmlu" / "test").glob("*_test.csv"))


def _prep_mmlu(root: Path, out: Path) -> None:
    subjects = mmlu_subjects(root)
    if not subjects:
        raise FileNotFoundError(f"no *_test.csv files in {root / 'mmlu' / 'test'}")
    for subject in subjects:
        for split in ("test", "dev"):
            src = root / "mmlu" / split / f"{subject}_{split}.csv"
            if not src.is_file():
                raise FileNotFoundError(f"MMLU file {src} is missing")
            rows = []
            with open(src, encoding="utf-8", newline="") as f:
                for i, rec in enumerate(csv.reader(f), 1):
                    if len(rec) != 6 or rec[5].strip() not in {"A", "B", "C", "D"}:
                        raise ValueError(f"{src}: row {i}: expected question,A,B,C,D,answer(A-D)")
                    rows.append(
                        {
                            "question": rec[0],
                            "subject": subject,
                            "choices": rec[1:5],
                            "answer": "ABCD".index(rec[5].strip()),
                        }
                    )
            _write_jsonl(rows, out / "mmlu" / f"{subject}.{split}.jsonl")


def _prep_gsm8k(root: Path, out: Path) -> None:
    for split in ("train", "test"):
        src = root / "gsm8k" / f"{split}.jsonl"
        rows = _read_jsonl(src)
        for i, r in enumerate(rows, 1):
            if "question" not in r or "####" not in str(r.get("answer", "")):
                raise ValueError(f"{src}: row {i}: needs 'question' and an 'answer' ending '#### N'")
        _write_jsonl(rows, out / f"gsm8k.{split}.jsonl")


def _synthetic():
    try:
        from ..data import synthetic
    except ImportError as exc:  # pragma: no cover - the module ships with the package
        raise ValueError(f"the sdd_synth_* tasks need sdd_plugin.data.synthetic: {exc}") from exc
    return synthetic


def _prep_synth_mc(root: Path | None, out: Path) -> None:
    syn = _synthetic()
    _write_jsonl(syn.multiple_choice(SYNTH_TEST_ROWS, seed=0, split="test"), out / "synth_mc.test.jsonl")
    _write_jsonl(syn.multiple_choice(SYNTH_TRAIN_ROWS, seed=0, split="train"), out / "synth_mc.train.jsonl")


def _prep_synth_math(root: Path | None, out: Path) -> None:
    syn = _synthetic()
    _write_jsonl(syn.word_problems(SYNTH_TEST_ROWS, seed=0, split="test"), out / "synth_math.test.jsonl")
    _write_jsonl(syn.word_problems(SYNTH_TRAIN_ROWS, seed=0, split="train"), out / "synth_math.train.jsonl")


def _prep_synth_ppl(root: Path | None, out: Path) -> None:
    """The held-out word problems of sdd_synth_math, each ``question + "\\n" + answer`` as one page."""
    syn = _synthetic()
    rows = syn.word_problems(SYNTH_TEST_ROWS, seed=0, split="test")
    _write_jsonl(({"page": r["question"] + "\n" + r["answer"]} for r in rows), out / "synth_ppl.test.jsonl")


def wikitext_pages(path: str | os.PathLike) -> list[str]:
    """Split a WikiText raw file into articles at the top-level headings `` = Title = ``.

    Each page is the heading line and the article's lines (sub-headings `` = = ... = = `` included),
    as in the file (leading/trailing spaces kept, CRLF -> LF), joined with newlines and ending in one.
    Empty lines are dropped (the local file has none). Text before the first heading, if any, is a
    page of its own.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    pages: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        s = line.strip()
        if s.startswith("= ") and s.endswith(" =") and not s.startswith("= ="):
            pages.append([line])
        elif pages:
            pages[-1].append(line)
        else:
            pages.append([line])
    if not pages:
        raise ValueError(f"{path}: no text (expected WikiText raw lines with ' = Title = ' headings)")
    return ["\n".join(p) + "\n" for p in pages]


def _prep_wikitext(root: Path, out: Path) -> None:
    pages = wikitext_pages(root / "wikitext2" / "wiki.test.raw")
    _write_jsonl(({"page": p} for p in pages), out / "wikitext2.test.jsonl")


PREPARERS: dict[str, Callable[[Any, Path], None]] = {
    "sdd_arc_easy": lambda r, o: _prep_arc(r, o, "Easy"),
    "sdd_arc_challenge": lambda r, o: _prep_arc(r, o, "Challenge"),
    "sdd_hellaswag": _prep_hellaswag,
    "sdd_truthfulqa_mc2": _prep_truthfulqa,
    "sdd_mmlu": _prep_mmlu,
    "sdd_winogrande": _prep_winogrande,
    "sdd_gsm8k": _prep_gsm8k,
    "sdd_synth_mc": _prep_synth_mc,
    "sdd_synth_math": _prep_synth_math,
    "sdd_synth_ppl": _prep_synth_ppl,
    "sdd_wikitext": _prep_wikitext,
}


def _source_stats(root: Path | None, spec: TaskSpec) -> list:
    stats = []
    for rel in spec.sources:
        p = root / rel  # type: ignore[operator]
        files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            stats.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return stats


def _local_tasks(tasks: Sequence[str]) -> list[str]:
    """The ``sdd_*`` entries of ``tasks`` (an ``sdd_mmlu_<subject>`` counts as ``sdd_mmlu``)."""
    out = ["sdd_mmlu" if t.startswith("sdd_mmlu_") else t for t in tasks]
    return list(dict.fromkeys(t for t in out if t in TASKS))


def check_task_data(tasks: Sequence[str], data_root: str | os.PathLike | None = None) -> Path | None:
    """Validate that the local files of the ``sdd_*`` tasks exist; returns the data root (or None)."""
    tasks = _local_tasks(tasks)
    needs = [t for t in tasks if TASKS[t].sources]
    if not needs:
        return Path(resolve_data_root(data_root)) if data_root is not None else None
    root = resolve_data_root(data_root)
    for t in needs:
        for rel in TASKS[t].sources:
            p = root / rel
            if not p.exists():
                raise FileNotFoundError(f"task {t} needs {p}, which does not exist (data root {root})")
    return root


def _package_tasks_dir() -> Path:
    return Path(str(resources.files("sdd_plugin.evaluate") / "tasks"))


def prepare_tasks(tasks: Sequence[str], data_root: str | os.PathLike | None = None) -> Path:
    """Convert the data of the requested ``sdd_*`` tasks and render their YAMLs; returns the folder.

    The folder (in the cache, one per data root) is what ``TaskManager(include_path=...)`` reads.
    Conversions are redone only when a source file changed.
    """
    root = check_task_data(tasks, data_root)
    folder = cache_dir() / "lm_eval_tasks" / stable_hash({"root": str(root), "v": PREP_VERSION}, 12)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for t in _local_tasks(tasks):
        spec = TASKS[t]
        stamp = data / f"{t}.stamp.json"
        want = {"v": PREP_VERSION, "sources": _source_stats(root, spec)}
        if not spec.sources:  # embedded data: regenerate when the generator changes
            want["generator"] = file_hash(_synthetic().__file__)
        if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == want:
            continue
        log.info("preparing data of %s into %s", t, data)
        PREPARERS[t](root, data)
        write_json_atomic(stamp, want)
    pkg = _package_tasks_dir()
    data_str = str(data.resolve())
    for y in sorted(pkg.glob("sdd_*.yaml")):
        text = y.read_text(encoding="utf-8").replace(PLACEHOLDER, data_str)
        _write_if_changed(folder / y.name, text)
    _write_if_changed(folder / "sdd_task_utils.py", (pkg / "sdd_task_utils.py").read_text(encoding="utf-8"))
    if root is not None and (root / "mmlu" / "test").is_dir():
        _render_mmlu(
            folder, data_str, mmlu_subjects(root), (pkg / "_sdd_mmlu_template_yaml").read_text("utf-8")
        )
    return folder


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def _render_mmlu(folder: Path, data_str: str, subjects: list[str], template: str) -> None:
    sub = folder / "sdd_mmlu"
    sub.mkdir(exist_ok=True)
    names = []
    for s in subjects:
        nice = s.replace("_", " ")
        text = (
            template.replace(PLACEHOLDER, data_str).replace("@SUBJECT@", s)
            + f'task: sdd_mmlu_{s}\ntask_alias: "{nice}"\n'
            + f'description: "The following are multiple choice questions (with answers) about {nice}.\\n\\n"\n'
        )
        _write_if_changed(sub / f"sdd_mmlu_{s}.yaml", text)
        names.append(f"sdd_mmlu_{s}")
    group = (
        "group: sdd_mmlu\ntask:\n"
        + "".join(f"  - {n}\n" for n in names)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 2\n"
    )
    _write_if_changed(sub / "sdd_mmlu.yaml", group)


# ---------------------------------------------------------------------------------------------
# task names, shots, models
# ---------------------------------------------------------------------------------------------


def expand_tasks(tasks: str | Sequence[str] | None = None, preset: str | None = None) -> list[str]:
    """Task names from a comma list and/or a preset, in order, without duplicates."""
    out: list[str] = []
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        out += PRESETS[preset]
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    for t in tasks or []:
        t = t.strip()
        if t in PRESETS:
            out += PRESETS[t]
        elif t:
            out.append(t)
    if not out:
        raise ValueError("no tasks given: pass --tasks (e.g. sdd_arc_easy,sdd_hellaswag) or --preset")
    return list(dict.fromkeys(out))


def validate_tasks(tasks: Sequence[str], task_manager=None) -> None:
    """Raise ValueError naming unknown tasks and listing the known ``sdd_*`` tasks and presets.

    Without ``task_manager`` only ``sdd_*`` names are checked (stock names need lm-eval's index).
    """
    unknown = [t for t in tasks if t not in TASKS and not t.startswith("sdd_mmlu_")]
    if not unknown:
        return
    if task_manager is None:  # stock names are checked later against lm-eval's (slow) index
        unknown = [t for t in unknown if t.startswith("sdd_")]
    else:
        known = set(task_manager.all_tasks)
        unknown = [t for t in unknown if t.startswith("sdd_") or t not in known]
    if unknown:
        raise ValueError(
            f"unknown task(s) {', '.join(unknown)}; local tasks: {', '.join(TASKS)}; presets: "
            f"{', '.join(PRESETS)}; any stock lm-eval task name (e.g. arc_easy) also works when the hub is reachable"
        )


def parse_shots(value: str | int | dict | None) -> dict[str, int] | int | None:
    """``"5"`` -> 5, ``"sdd_arc_easy=0,sdd_hellaswag=10"`` -> dict; dicts/ints pass through."""
    if value is None or isinstance(value, (int, dict)):
        return value
    value = value.strip()
    if not value:
        return None
    if "=" not in value:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"--shots {value!r}: expected an integer or task=k,... pairs") from None
    out = {}
    for part in value.split(","):
        name, _, k = part.partition("=")
        try:
            out[name.strip()] = int(k)
        except ValueError:
            raise ValueError(f"--shots: {part!r} is not task=k with an integer k") from None
    return out


def _shots_for(task: str, num_fewshot: dict[str, int] | int | None) -> int | None:
    if isinstance(num_fewshot, int):
        return num_fewshot
    if isinstance(num_fewshot, dict) and task in num_fewshot:
        return num_fewshot[task]
    if task in TASKS:
        return TASKS[task].shots
    return STOCK_SHOTS.get(task)


def model_paths(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(base model folder, adapter folder or None)``; a LoRA folder names its base in adapter_config.json."""
    from ..models import resolve_model

    p = Path(model).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        base = cfg.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{p / 'adapter_config.json'} has no base_model_name_or_path")
        return resolve_model(base), p
    return resolve_model(model), None


def _folder_identity(folder: Path) -> dict:
    files = {}
    for f in sorted(folder.iterdir()):
        if f.suffix in {".safetensors", ".json", ".jinja"} or f.name == "tokenizer.model":
            st = f.stat()
            files[f.name] = file_hash(f) if f.suffix in {".json", ".jinja"} else [st.st_size, st.st_mtime_ns]
    return {"path": str(folder.resolve()), "files": files}


def model_identity(model: str | os.PathLike) -> dict:
    """What the result cache keys a model on: resolved folders, file sizes/mtimes, JSON hashes."""
    base, adapter = model_paths(model)
    return {"base": _folder_identity(base), "adapter": _folder_identity(adapter) if adapter else None}


def _check_limit(limit: Any) -> int | float | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise ValueError(f"limit must be a positive number of docs per task, got {limit!r}")
    return int(limit) if float(limit).is_integer() and limit >= 1 else float(limit)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def _primary(task: str) -> tuple[str, str, str]:
    """(metric, filter, display label) of a task."""
    if task in TASKS:
        s = TASKS[task]
        return s.metric, s.filter, s.label or s.metric
    if task.startswith("sdd_mmlu_"):
        return "acc", "none", "acc"
    m, f = STOCK_METRICS.get(task, ("", "none"))
    return m, f, ("mc2" if task == "truthfulqa_mc2" else m)


def _pick_metric(task: str, res: dict) -> tuple[str, str, str]:
    metric, filt, label = _primary(task)
    if metric and f"{metric},{filt}" in res:
        return metric, filt, label
    for m in ("acc_norm" if metric == "acc_norm" else "acc", "exact_match", "acc", "mc2", "f1", "bleu"):
        for k in res:
            if k.startswith(f"{m},") and "stderr" not in k:
                return m, k.split(",", 1)[1], m
    for k, v in res.items():
        if "," in k and "stderr" not in k and isinstance(v, (int, float)):
            m, f = k.split(",", 1)
            return m, f, m
    raise ValueError(f"lm-eval returned no numeric metric for task {task}: {sorted(res)}")


def _chance_and_items(task: str, res: dict, metric: str, filt: str) -> tuple[float | None, list[float], int]:
    """Chance level over the evaluated docs, per-item values of the primary metric, and n."""
    samples = res.get("samples") or {}
    configs = res.get("configs") or {}
    chances: list[float] = []
    items: list[float] = []
    n = 0
    for sub, rows in samples.items():
        out_type = (configs.get(sub) or {}).get("output_type", "multiple_choice")
        for s in rows:
            if s.get("filter", "none") != filt:
                continue
            n += 1
            v = s.get(metric)
            if out_type == "loglikelihood_rolling" and isinstance(v, (list, tuple)) and len(v) == 2:
                v = _ppl_item(metric, float(v[0]), float(v[1]))  # (log-likelihood, #words or #bytes)
            if v is not None and _clean(v) is not None:
                items.append(float(v))
            doc = s.get("doc") or {}
            if out_type == "loglikelihood_rolling":
                chances.append(math.nan)  # no chance level for perplexity
            elif out_type != "multiple_choice":
                chances.append(0.0)
            elif "truthfulqa_mc2" in sub and "mc2_targets" in doc:
                labels = doc["mc2_targets"]["labels"]
                chances.append(sum(labels) / len(labels))
            else:
                k = len(s.get("arguments") or [])
                chances.append(1.0 / k if k else math.nan)
    chance = float(sum(chances) / len(chances)) if chances and not any(map(math.isnan, chances)) else None
    return chance, items, n


def _ppl_item(metric: str, loglik: float, count: float) -> float | None:
    """One document's value of a perplexity metric from its (log-likelihood, #words/#bytes) pair."""
    if count <= 0:
        return None
    if metric == "bits_per_byte":
        return -loglik / count / math.log(2)
    return math.exp(-loglik / count)


def _ppl_stderr(res: dict, metric: str, filt: str) -> float | None:
    """Delta-method standard error of a corpus-level perplexity metric over the evaluated docs.

    ``bits_per_byte`` = -Σll / Σbytes / ln 2 is a ratio estimator R = Σa/Σb; its variance is
    ≈ n/(n-1) · Σ(a_i − R·b_i)² / (Σb)² (the perplexities are exp(R), so ×exp(R)). lm-eval reports
    none for these aggregations.
    """
    pairs = []
    for rows in (res.get("samples") or {}).values():
        for s in rows:
            v = s.get(metric)
            if s.get("filter", "none") == filt and isinstance(v, (list, tuple)) and len(v) == 2:
                pairs.append((-float(v[0]), float(v[1])))
    n = len(pairs)
    total = sum(b for _, b in pairs)
    if n < 2 or total <= 0:
        return None
    r = sum(a for a, _ in pairs) / total
    se = math.sqrt(n / (n - 1) * sum((a - r * b) ** 2 for a, b in pairs)) / total
    return se / math.log(2) if metric == "bits_per_byte" else math.exp(r) * se


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict)):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


#: rolling (perplexity) windows are up to the model's max length (8192 for the default model) and
#: lm-eval keeps the float32 log-softmax of a whole batch: cap a batch at this many window tokens
ROLLING_TOKENS_PER_BATCH = 8192


def rolling_batch_size(batch_size: int | str, max_length: int) -> int | str:
    """Batch size for a perplexity task: ``batch_size`` capped so batch × max_length ≤ the budget.

    One 8192-token window of a 49k-vocab model already needs ~3 GB of logits; batch 8 would need ~26.
    """
    if not isinstance(batch_size, int):
        return batch_size  # "auto": lm-eval measures it
    return max(1, min(batch_size, ROLLING_TOKENS_PER_BATCH // max(1, int(max_length))))


def _eval_one(lm, task: str, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed) -> dict:
    import lm_eval

    t0 = time.perf_counter()
    saved_bs = getattr(lm, "batch_size_per_gpu", None)
    if not higher_is_better(task) and saved_bs is not None:
        lm.batch_size_per_gpu = rolling_batch_size(saved_bs, lm.max_length)
    try:
        res = _simple_evaluate(
            lm_eval, lm, task, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed
        )
    finally:
        if saved_bs is not None:
            lm.batch_size_per_gpu = saved_bs
    seconds = time.perf_counter() - t0
    return _summarise(task, res, shots, seconds)


def _simple_evaluate(lm_eval, lm, task, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed):
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        num_fewshot=shots,
        limit=limit,
        task_manager=tm,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
        bootstrap_iters=1000,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def _summarise(task: str, res: dict, shots, seconds: float) -> dict:
    top = res["results"].get(task)
    if top is None:
        raise RuntimeError(f"lm-eval returned no results for {task}: {sorted(res['results'])}")
    metric, filt, label = _pick_metric(task, top)
    chance, items, n = _chance_and_items(task, res, metric, filt)
    metrics = {k: _clean(v) for k, v in top.items() if "," in k and not isinstance(v, str)}
    stderr = _clean(top.get(f"{metric}_stderr,{filt}"))
    if not isinstance(stderr, (int, float)):  # "N/A" for the perplexity aggregations
        stderr = _ppl_stderr(res, metric, filt) if metric in LOWER_IS_BETTER_METRICS else None
    n_shot = res.get("n-shot", {})
    used_shots = n_shot.get(task)
    if used_shots is None:  # groups: the subtasks carry the shots
        vals = {v for k, v in n_shot.items() if k != task}
        used_shots = vals.pop() if len(vals) == 1 else shots
    return {
        "task": task,
        "metric": label,
        "metric_key": f"{metric},{filt}",
        "value": _clean(top[f"{metric},{filt}"]),
        "stderr": stderr,
        "n": n,
        "shots": used_shots,
        "chance": chance,
        "higher_is_better": higher_is_better(task)
        if task in TASKS
        else metric not in LOWER_IS_BETTER_METRICS,
        "metrics": metrics,
        "per_item": items,
        "source": "sdd" if task.startswith("sdd_") else "lm-eval",
        "seconds": round(seconds, 2),
    }


def _task_manager(folder: Path, stock: bool = False):
    """lm-eval's task index of the rendered folder (+ the stock tasks, whose indexing takes ~10 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=stock)


def _load_lm(model: str | os.PathLike, batch_size: int | str, dtype: str = "float32"):
    from lm_eval.models.huggingface import HFLM

    base, adapter = model_paths(model)
    tok = adapter if adapter and (adapter / "tokenizer_config.json").is_file() else base
    return HFLM(
        pretrained=str(base),
        peft=str(adapter) if adapter else None,
        tokenizer=str(tok),
        device="cpu",
        dtype=dtype,
        batch_size=batch_size,
        trust_remote_code=False,
    )


def _chat_template_hash(model: str | os.PathLike) -> str | None:
    base, adapter = model_paths(model)
    for folder in (adapter, base):
        if folder is None:
            continue
        cfg = folder / "tokenizer_config.json"
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return stable_hash(jinja.read_text(encoding="utf-8"))
        if cfg.is_file():
            tmpl = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            if tmpl:
                return stable_hash(tmpl)
    return None


def evaluate(
    model: str | os.PathLike,
    tasks: str | Sequence[str],
    limit: int | float | None = None,
    num_fewshot: dict[str, int] | int | str | None = None,
    batch_size: int | str = 8,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 1234,
    use_cache: bool = True,
    dtype: str = "float32",
) -> dict:
    """Evaluate ``model`` on ``tasks`` with lm-eval; writes ``eval_results.json``/``.md`` into ``out``.

    ``model``: embedded name, HF folder, hub id, or a LoRA adapter folder (evaluated on its base via
    lm-eval's ``peft=``). ``num_fewshot``: one int for all tasks, ``{task: k}``, or None for the
    defaults (OpenLLM v1: ARC-C 25, HellaSwag 10, TruthfulQA 0, MMLU 5, WinoGrande 5, GSM8K 5,
    ARC-E 0). Each (model, task, limit, shots, settings) result is cached, so reruns are instant and
    an interrupted multi-task run resumes at the first unfinished task. ``dtype``: the weights'
    dtype (``bfloat16`` runs the CPU's bf16 matmuls; compare models only at the same dtype).
    """
    import lm_eval
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    warn_if_slow_dtype(dtype, "evaluation")
    tasks = expand_tasks(tasks)
    limit = _check_limit(limit)
    num_fewshot = parse_shots(num_fewshot)
    if isinstance(num_fewshot, int) and num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if isinstance(num_fewshot, dict):
        bad = [k for k in num_fewshot if k not in tasks]
        if bad:
            raise ValueError(
                f"shots given for task(s) not being evaluated: {', '.join(bad)} (tasks: {', '.join(tasks)})"
            )
        neg = [k for k, v in num_fewshot.items() if v < 0]
        if neg:
            raise ValueError(f"shots must be >= 0 for {', '.join(neg)}")
    if fewshot_as_multiturn and not apply_chat_template:
        raise ValueError("fewshot_as_multiturn needs apply_chat_template=True")
    validate_tasks(tasks)  # sdd_* names, before anything heavy
    base, adapter = model_paths(model)  # raises ModelNotFoundError (FileNotFoundError) early
    folder = prepare_tasks(tasks, data_root)
    tm = None
    stock = any(t not in TASKS and not t.startswith("sdd_mmlu_") for t in tasks)
    if stock:
        tm = _task_manager(folder, stock=True)
        validate_tasks(tasks, tm)  # stock names: checked against lm-eval's index

    ident = model_identity(model)
    chat_hash = _chat_template_hash(model) if apply_chat_template else None
    settings = {
        "apply_chat_template": bool(apply_chat_template),
        "fewshot_as_multiturn": bool(fewshot_as_multiturn),
        "chat_template_sha": chat_hash,
        "batch_size": batch_size,
        "seed": seed,
        "device": "cpu",
        "dtype": dtype,
    }
    version = getattr(lm_eval, "__version__", "unknown")
    results: dict[str, Any] = {}
    lm = None
    t_start = time.perf_counter()
    bar = tqdm(tasks, desc="sdd eval", unit="task")
    for task in bar:
        bar.set_postfix_str(task)
        shots = _shots_for(task, num_fewshot)
        key = stable_hash(
            {
                "model": ident,
                "task": task,
                "task_files": _task_fingerprint(folder, task),
                "limit": limit,
                "shots": shots,
                "chat": [settings["apply_chat_template"], settings["fewshot_as_multiturn"], chat_hash],
                "seed": seed,
                "lm_eval": version,
                "v": PREP_VERSION,
                # float32 results keep their old keys; any other dtype is its own result
                **({"dtype": dtype} if dtype != "float32" else {}),
            }
        )
        cache_file = cache_dir() / "eval_results" / f"{task}-{key}.json"
        if use_cache and cache_file.is_file():
            r = json.loads(cache_file.read_text(encoding="utf-8"))
            r["cached"] = True
            results[task] = r
            continue
        if tm is None:
            tm = _task_manager(folder, stock=stock)
        if lm is None:
            lm = _load_lm(model, batch_size, dtype)
        try:
            r = _eval_one(lm, task, tm, limit, shots, apply_chat_template, fewshot_as_multiturn, seed)
        except ConnectionError as exc:  # stock tasks fetch their data from the hub
            local = f" (or the local sdd_{task})" if f"sdd_{task}" in TASKS else ""
            raise FileNotFoundError(
                f"task {task} needs its dataset from the Hugging Face hub, which is unreachable: {exc}; "
                f"connect, or use a local task{local}"
            ) from exc
        write_json_atomic(cache_file, r)
        r["cached"] = False
        results[task] = r
    bar.close()

    report = {
        "model": str(model),
        "model_path": str(base),
        "adapter": str(adapter) if adapter else None,
        "tasks": results,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "settings": settings,
        "lm_eval_version": version,
        "data_root": str(check_task_data(tasks, data_root) or ""),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timing": {
            "total_seconds": round(time.perf_counter() - t_start, 2),
            "per_task_seconds": {t: r.get("seconds") for t, r in results.items()},
        },
    }
    if out is not None:
        out = Path(out)
        write_json_atomic(out / "eval_results.json", report)
        write_text_atomic(out / "eval_results.md", results_markdown(report))
    return report


def _task_fingerprint(folder: Path, task: str) -> str:
    """Hash of the rendered YAML(s) and prepared data of a local task ("" for stock tasks)."""
    if not task.startswith("sdd_"):
        return ""
    if task.startswith("sdd_mmlu"):
        name, yamls = "sdd_mmlu", sorted((folder / "sdd_mmlu").glob("*.yaml"))
    else:
        name, yamls = task, [folder / f"{task}.yaml"]
    parts = [file_hash(y) for y in yamls if y.is_file()]
    stamp = folder / "data" / f"{name}.stamp.json"
    if stamp.is_file():
        parts.append(file_hash(stamp))
    return stable_hash(parts)


def results_markdown(report: dict) -> str:
    """A Markdown table of one ``eval_results.json``."""
    s = report.get("settings", {})
    lines = [
        f"# Evaluation: `{report.get('model')}`",
        "",
        f"lm-eval {report.get('lm_eval_version')}, limit {report.get('limit')}, "
        f"chat template {'on' if s.get('apply_chat_template') else 'off'}"
        f"{' (few-shot as multi-turn)' if s.get('fewshot_as_multiturn') else ''}, seed {s.get('seed')}",
        "",
        "| task | metric | shots | n | score | ± stderr | chance |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lower = False
    for t, r in report.get("tasks", {}).items():
        hib = higher_is_better(dict(r, task=t))
        lower |= not hib
        lines.append(
            f"| {t} | {metric_label(r.get('metric'), hib)} | {r.get('shots')} | {r.get('n')} | "
            f"{format_score(r.get('value'), hib)} | {format_score(r.get('stderr'), hib)} | "
            f"{format_score(r.get('chance'), hib)} |"
        )
    if lower:
        lines += ["", LOWER_NOTE]
    return "\n".join(lines) + "\n"


LOWER_NOTE = "↓ = lower is better (bits per byte: plain numbers, not %; no chance level)."


def _pct(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def format_score(v: Any, higher_is_better: bool = True) -> str:
    """A score for tables: accuracies as ``"40.0%"``, lower-is-better metrics as ``"1.234"``."""
    if higher_is_better:
        return _pct(v)
    return "–" if v is None else f"{v:.3f}"


def metric_label(metric: Any, higher_is_better: bool = True) -> str:
    """The metric name, marked ``↓`` when lower is better."""
    return f"{metric}" if higher_is_better else f"{metric} ↓"


# ---------------------------------------------------------------------------------------------
# recovery
# ---------------------------------------------------------------------------------------------


def load_results(path: str | os.PathLike) -> dict:
    """Read an ``eval_results.json`` (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval_results.json"
    if not p.is_file():
        raise FileNotFoundError(f"no eval results at {p}")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "tasks" not in data:
        raise ValueError(f"{p} is not an eval_results.json (no 'tasks' key)")
    return data


def recovery(
    score: float | None,
    baseline: float | None,
    chance: float | None = 0.0,
    higher_is_better: bool = True,
) -> tuple[float | None, float | None]:
    """``(score / baseline, (score - chance) / (baseline - chance))``; None where undefined.

    Above-chance recovery is undefined when the baseline is not above chance. For a lower-is-better
    metric (bits per byte) plain recovery is ``baseline / score`` (1.0 = as good as the baseline,
    < 1 = worse) and above-chance recovery is None (a perplexity task has no chance level).
    """
    if score is None or baseline is None:
        return None, None
    if not higher_is_better:
        return (baseline / score if score > 0 and baseline > 0 else None), None
    plain = score / baseline if baseline > 0 else None
    c = chance or 0.0
    above = (score - c) / (baseline - c) if baseline - c > 1e-12 else None
    return plain, above


def _label(res: dict, used: set[str]) -> str:
    m = str(res.get("label") or res.get("model", "model"))
    p = Path(m)
    label = p.name if (len(p.parts) > 1 or p.is_absolute()) else m
    base, i = label, 2
    while label in used:
        label, i = f"{base} ({i})", i + 1
    used.add(label)
    return label


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


#: a task informs above-chance recovery when its baseline beats chance by this many standard errors
INFORMATIVE_SIGMAS = 2.0


def informative(baseline_task: dict, chance: float | None) -> bool:
    """Whether the baseline is clearly above chance on a task: ``value - chance >=
    INFORMATIVE_SIGMAS x stderr``. Where it is not (a 135M model on MMLU or WinoGrande),
    ``(score - chance) / (baseline - chance)`` divides by noise: one item more or less moves a
    model's above-chance recovery by tens of points."""
    value, err = baseline_task.get("value"), baseline_task.get("stderr")
    if value is None or chance is None or err is None:
        return False
    return value - chance >= INFORMATIVE_SIGMAS * err and value - chance > 0


def paired_gap(
    first: dict,
    second: dict,
    baseline: dict,
    *,
    only_informative: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict | None:
    """Mean above-chance recovery of ``second`` minus ``first`` (points), with a paired bootstrap
    95 % interval: the items of each task are resampled with the same indices for both models
    (they answered the same documents), the baseline and chance level are fixed normalisers.
    Uses the tasks with per-item scores of equal length in both models and a baseline above chance
    (``only_informative``: only :func:`informative` ones). None when no task qualifies."""
    import numpy as np

    rng = np.random.default_rng(seed)
    used, boot, point = [], [], []
    for t, b in baseline.get("tasks", {}).items():
        ra, rb = first.get("tasks", {}).get(t), second.get("tasks", {}).get(t)
        if ra is None or rb is None or not higher_is_better(dict(b, task=t)):
            continue
        chance = b.get("chance") if b.get("chance") is not None else 0.0
        base = b.get("value")
        ia, ib = ra.get("per_item"), rb.get("per_item")
        if base is None or base - chance <= 1e-12 or not ia or not ib or len(ia) != len(ib):
            continue
        if only_informative and not informative(b, chance):
            continue
        xa, xb = np.asarray(ia, dtype=float), np.asarray(ib, dtype=float)
        idx = rng.integers(0, len(xa), size=(n_boot, len(xa)))
        boot.append((xb[idx].mean(1) - xa[idx].mean(1)) / (base - chance))
        point.append((xb.mean() - xa.mean()) / (base - chance))
        used.append(t)
    if not used:
        return None
    dist = 100 * np.mean(boot, axis=0)
    lo, hi = np.percentile(dist, [2.5, 97.5])
    return {
        "gap": round(float(100 * np.mean(point)), 2),
        "ci95": [round(float(lo), 2), round(float(hi), 2)],
        "tasks": used,
        "n_boot": n_boot,
    }


def recovery_table(results: dict | Sequence[dict], baseline_results: dict) -> dict:
    """Per task and averaged: score, baseline, chance, plain and above-chance recovery.

    ``results`` is one ``eval_results`` dict or a list of them (one per model); tasks are those
    both the model and the baseline have. Comparisons where n or shots differ are flagged.

    Each row carries ``higher_is_better``. The ``average`` (score, baseline, chance, recovery,
    above-chance recovery, ``n_tasks``) is over the higher-is-better tasks only (averaging bits per
    byte with accuracies is meaningless); the lower-is-better tasks' plain recovery
    (baseline / score) is averaged separately as ``lower_is_better_recovery`` over
    ``n_lower_is_better`` tasks (None when there are none).
    """
    if isinstance(results, dict):
        results = [results]
    used: set[str] = set()
    base_label = _label(baseline_results, set())
    btasks = baseline_results.get("tasks", {})
    table: dict[str, Any] = {"baseline": base_label, "tasks": [], "models": [], "warnings": []}
    order: list[str] = []
    for res in results:
        label = _label(res, used | {base_label})
        rows = {}
        for t, r in res.get("tasks", {}).items():
            b = btasks.get(t)
            if b is None:
                table["warnings"].append(f"{label}: task {t} is not in the baseline results; skipped")
                continue
            if r.get("metric") != b.get("metric"):
                table["warnings"].append(
                    f"{label}: task {t} metric {r.get('metric')} != baseline {b.get('metric')}"
                )
            for k in ("n", "shots"):
                if r.get(k) != b.get(k):
                    table["warnings"].append(f"{label}: task {t} {k}={r.get(k)} but baseline {k}={b.get(k)}")
            hib = higher_is_better(dict(b, task=t))
            chance = b.get("chance") if b.get("chance") is not None else r.get("chance")
            if not hib:
                chance = None
            plain, above = recovery(r.get("value"), b.get("value"), chance, higher_is_better=hib)
            rows[t] = {
                "metric": r.get("metric"),
                "higher_is_better": hib,
                "score": r.get("value"),
                "baseline": b.get("value"),
                "chance": chance,
                "recovery": plain,
                "above_chance_recovery": above,
                "informative": informative(b, chance) if hib else False,
            }
            if t not in order:
                order.append(t)
        hi = [v for v in rows.values() if v["higher_is_better"]]
        lo = [v for v in rows.values() if not v["higher_is_better"]]
        avg = {
            "score": _mean(v["score"] for v in hi),
            "baseline": _mean(v["baseline"] for v in hi),
            "chance": _mean(v["chance"] for v in hi),
            "recovery": _mean(v["recovery"] for v in hi),
            "above_chance_recovery": _mean(v["above_chance_recovery"] for v in hi),
            "n_tasks": len(hi),
            # only the tasks whose baseline is clearly above chance (see informative())
            "above_chance_recovery_informative": _mean(
                v["above_chance_recovery"] for v in hi if v["informative"]
            ),
            "n_informative": sum(1 for v in hi if v["informative"]),
            "lower_is_better_recovery": _mean(v["recovery"] for v in lo),
            "n_lower_is_better": len(lo),
        }
        table["models"].append({"model": label, "tasks": rows, "average": avg})
    table["tasks"] = order
    return table


def recovery_markdown(table: dict) -> str:
    """Markdown of a recovery table: one block per model, tasks as rows, an average row."""
    lines = [
        f"# Recovery against `{table['baseline']}`",
        "",
        "plain recovery = score / baseline; above-chance recovery = (score − chance) / (baseline − chance)",
        "",
    ]
    if any(not r.get("higher_is_better", True) for m in table["models"] for r in m["tasks"].values()):
        lines += [
            "Tasks marked ↓ (bits per byte) are lower-is-better: their plain recovery is baseline / score "
            "(100% = as good as the baseline), they have no chance level and no above-chance recovery, "
            "and they are not in the **average** row (over the higher-is-better tasks) but in their own "
            "row.",
            "",
        ]
    for m in table["models"]:
        lines += [
            f"## {m['model']}",
            "",
            "| task | metric | chance | baseline | score | recovery | above-chance recovery |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for t in table["tasks"]:
            r = m["tasks"].get(t)
            if r is None:
                continue
            hib = r.get("higher_is_better", True)
            lines.append(
                f"| {t} | {metric_label(r['metric'], hib)} | {format_score(r['chance'], hib)} | "
                f"{format_score(r['baseline'], hib)} | {format_score(r['score'], hib)} | "
                f"{_pct(r['recovery'])} | {_pct(r['above_chance_recovery'])} |"
            )
        a = m["average"]
        if a.get("n_tasks", 0) or not a.get("n_lower_is_better"):
            lines.append(
                f"| **average** ({a['n_tasks']} tasks) | | {_pct(a['chance'])} | {_pct(a['baseline'])} | "
                f"{_pct(a['score'])} | **{_pct(a['recovery'])}** | **{_pct(a['above_chance_recovery'])}** |"
            )
        if a.get("n_lower_is_better"):
            lines.append(
                f"| **lower-is-better average** ({a['n_lower_is_better']} tasks) | ↓ | | | | "
                f"**{_pct(a['lower_is_better_recovery'])}** | – |"
            )
        lines.append("")
    if table.get("warnings"):
        lines += ["Warnings:", ""] + [f"- {w}" for w in table["warnings"]] + [""]
    return "\n".join(lines)


def plot_recovery(table: dict, path: str | os.PathLike) -> Path:
    """Bars per task: scores (baseline vs each model, chance marked), recovery % per task.

    Lower-is-better tasks (bits per byte) get their own panel of raw values (no chance line) and
    appear in the recovery panel as ``task ↓`` with plain recovery = baseline / score only; the
    ``average`` column is over the higher-is-better tasks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = table["models"]

    def hib(t: str) -> bool:
        return all(m["tasks"][t].get("higher_is_better", True) for m in models if t in m["tasks"])

    hi_tasks = [t for t in table["tasks"] if hib(t)]
    lo_tasks = [t for t in table["tasks"] if not hib(t)]
    score_cols = hi_tasks + ["average"] if hi_tasks or not lo_tasks else []
    rec_cols = score_cols + lo_tasks
    rec_names = score_cols + [f"{t} ↓" for t in lo_tasks]
    panels = (["scores"] if score_cols else []) + (["lower"] if lo_tasks else []) + ["recovery"]
    heights = {"scores": 1.0, "lower": 0.8, "recovery": 1.0}
    width = max(6.0, 1.6 * len(rec_cols) + 2) + 3.5
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(width, sum(3.75 * heights[p] for p in panels)),
        gridspec_kw={"height_ratios": [heights[p] for p in panels]},
        squeeze=False,
    )
    ax = dict(zip(panels, axes[:, 0]))

    def get(m: dict, t: str, key: str) -> float:
        r = m["average"] if t == "average" else m["tasks"].get(t, {})
        v = r.get(key)
        return float("nan") if v is None else float(v)

    def labels(vals: list[float]) -> list[str]:
        return ["" if math.isnan(v) else f"{v:.0f}" for v in vals]

    k = len(models) + 1
    w = 0.8 / k

    def value_bars(a, cols: list[str], scale: float) -> np.ndarray:
        x = np.arange(len(cols))
        base = [scale * get(models[0], t, "baseline") for t in cols] if models else [math.nan] * len(cols)
        bars = a.bar(x - 0.4 + w / 2, base, w, label=f"baseline: {table['baseline']}", color="0.55")
        if scale == 1.0:  # raw values (bits per byte): print them
            a.bar_label(bars, fmt="%.3f", fontsize=7)
        for i, m in enumerate(models, 1):
            vals = [scale * get(m, t, "score") for t in cols]
            bars = a.bar(x - 0.4 + w / 2 + i * w, vals, w, label=m["model"], color=f"C{i - 1}")
            if scale == 1.0:  # raw values (bits per byte): print them
                a.bar_label(bars, fmt="%.3f", fontsize=7)
        return x

    if "scores" in ax:
        a = ax["scores"]
        x = value_bars(a, score_cols, 100.0)
        if models:
            chance = [100 * get(models[0], t, "chance") for t in score_cols]
            a.hlines(chance, x - 0.42, x + 0.42, colors="k", linestyles="dashed", linewidth=1, label="chance")
        a.set_ylabel("score (%)")
        a.set_title("Scores per task (higher is better)")
        a.set_xticks(x, score_cols, rotation=20, ha="right")
        a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if "lower" in ax:
        a = ax["lower"]
        x = value_bars(a, lo_tasks, 1.0)
        metrics = sorted(
            {str(m["tasks"][t].get("metric")) for m in models for t in lo_tasks if t in m["tasks"]}
        )
        a.set_ylabel(" / ".join(metrics) or "value")
        a.set_title("Lower is better (no chance level)")
        a.margins(y=0.12)  # room for the value labels
        a.set_xticks(x, lo_tasks, rotation=20, ha="right")
        a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    a = ax["recovery"]
    x = np.arange(len(rec_cols))
    w2 = 0.8 / max(1, 2 * len(models))
    for i, m in enumerate(models):
        off = x - 0.4 + w2 / 2 + 2 * i * w2
        vals = [100 * get(m, t, "recovery") for t in rec_cols]
        bars = a.bar(off, vals, w2, label=f"{m['model']} (plain)", color=f"C{i}")
        a.bar_label(bars, labels=labels(vals), fontsize=7)
        vals = [100 * get(m, t, "above_chance_recovery") for t in rec_cols]
        if all(math.isnan(v) for v in vals):  # only lower-is-better tasks: no above-chance bars
            continue
        bars = a.bar(
            off + w2, vals, w2, hatch="//", color=f"C{i}", alpha=0.45, label=f"{m['model']} (above chance)"
        )
        a.bar_label(bars, labels=labels(vals), fontsize=7)
    a.axhline(100, color="k", linewidth=0.8)
    a.set_ylabel("recovery (%)")
    title = f"Recovery vs {table['baseline']}"
    if lo_tasks:
        title += "\n(↓ tasks: baseline / score; average = higher-is-better tasks)"
    a.set_title(title)
    a.set_xticks(x, rec_names, rotation=20, ha="right")
    a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_recovery(table: dict, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``recovery.json``, ``recovery.md`` and ``recovery.png`` into ``out``."""
    out = Path(out)
    paths = {"json": out / "recovery.json", "md": out / "recovery.md", "png": out / "recovery.png"}
    write_json_atomic(paths["json"], table)
    write_text_atomic(paths["md"], recovery_markdown(table))
    plot_recovery(table, paths["png"])
    return paths


def clear_prepared_tasks() -> None:
    """Delete every rendered task folder (they are re-created on demand)."""
    shutil.rmtree(cache_dir() / "lm_eval_tasks", ignore_errors=True)

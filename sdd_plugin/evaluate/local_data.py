"""Local data for the ``sdd_*`` tasks: the data root, converters, rendered task YAMLs.

The ``sdd_*`` task YAMLs (``sdd_plugin/evaluate/tasks/``) mirror lm-eval's stock tasks but read
JSONL files in the HF schemas. :func:`prepare_tasks` converts the files under the data root
(``../shared/data`` layout) into those schemas, renders the YAMLs into a cache folder pointing at
the converted data, and returns the folder for ``lm_eval.tasks.TaskManager(include_path=...)``.
``sdd_mmlu`` is rendered as a group of 57 subject tasks (``sdd_mmlu_<subject>``) with the stock
first-5-of-dev few-shot examples. The ``sdd_synth_*`` tasks generate their data and need no root.
The readers of the raw files (:func:`arc_rows`, :func:`hellaswag_rows`, :func:`wikitext_pages`)
are public for other scorers of the same data.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from ..cache import cache_dir, cached_artifact, fingerprint, stable_hash, write_json_atomic, write_text_atomic
from ..data import synthetic
from ..data.synthetic import write_jsonl
from .registry import TASKS, TaskSpec

log = logging.getLogger(__name__)

#: bump when the conversion of local data or the rendered YAMLs change (invalidates caches)
PREP_VERSION = 1
PLACEHOLDER = "@SDD_TASK_DATA@"

SYNTH_TEST_ROWS = 500
SYNTH_TRAIN_ROWS = 100


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


def data_file(path: str | os.PathLike | None, default: str) -> Path:
    """The file ``default`` (a path in the shared data layout) under ``path`` when that is a folder,
    ``path`` itself when it is a file, or under the resolved data root when ``path`` is None."""
    if path is None:
        p = resolve_data_root() / default
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / default
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist (expected the shared data layout: {default})")
    return p


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file exactly as written; ``ValueError`` naming the file and line.

    Not :func:`sdd_plugin.data.sources.load_source`: arrow unifies each column's type across rows
    (a column of ints and strings comes back as JSON text) and its errors name no line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: invalid JSON: {exc}") from exc
    return rows


def arc_rows(src: str | os.PathLike) -> list[dict]:
    """An ARC jsonl file in the HF schema (``id``, ``question``, ``choices: {text, label}``,
    ``answerKey``); ``ValueError`` naming the file and row for a bad row."""
    rows = []
    for i, r in enumerate(_read_jsonl(Path(src)), 1):
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
    return rows


def _prep_arc(root: Path, out: Path, variant: str) -> None:
    name = {"Easy": "arc_easy", "Challenge": "arc_challenge"}[variant]
    for src_split, split in (("Train", "train"), ("Dev", "validation"), ("Test", "test")):
        write_jsonl(
            arc_rows(root / "arc" / f"ARC-{variant}-{src_split}.jsonl"), out / f"{name}.{split}.jsonl"
        )


def hellaswag_rows(src: str | os.PathLike) -> list[dict]:
    """The preprocessed HellaSwag file (6 lines a task: context, label, 4 endings) in the HF schema
    (``ind``, ``query``, ``choices``, ``label``); ``ValueError`` naming the file and line."""
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
    return rows


def _prep_hellaswag(root: Path, out: Path) -> None:
    rows = hellaswag_rows(root / "hellaswag" / "hellaswag_val_full.txt.gz")
    write_jsonl(rows, out / "hellaswag.validation.jsonl")


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
    write_jsonl(rows, out / "truthfulqa.validation.jsonl")


def _prep_winogrande(root: Path, out: Path) -> None:
    src = root / "winogrande" / "dev.jsonl"
    rows = _read_jsonl(src)
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("sentence", "option1", "option2", "answer") if k not in r]
        if missing or "_" not in r.get("sentence", "") or str(r.get("answer")) not in {"1", "2"}:
            raise ValueError(f"{src}: row {i}: needs sentence (with _), option1, option2, answer 1/2")
        r["answer"] = str(r["answer"])
    write_jsonl(rows, out / "winogrande.validation.jsonl")


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
            write_jsonl(rows, out / "mmlu" / f"{subject}.{split}.jsonl")


def _prep_gsm8k(root: Path, out: Path) -> None:
    for split in ("train", "test"):
        src = root / "gsm8k" / f"{split}.jsonl"
        rows = _read_jsonl(src)
        for i, r in enumerate(rows, 1):
            if "question" not in r or "####" not in str(r.get("answer", "")):
                raise ValueError(f"{src}: row {i}: needs 'question' and an 'answer' ending '#### N'")
        write_jsonl(rows, out / f"gsm8k.{split}.jsonl")


def _prep_synth_mc(root: Path | None, out: Path) -> None:
    write_jsonl(synthetic.multiple_choice(SYNTH_TEST_ROWS, seed=0, split="test"), out / "synth_mc.test.jsonl")
    write_jsonl(
        synthetic.multiple_choice(SYNTH_TRAIN_ROWS, seed=0, split="train"), out / "synth_mc.train.jsonl"
    )


def _prep_synth_math(root: Path | None, out: Path) -> None:
    write_jsonl(synthetic.word_problems(SYNTH_TEST_ROWS, seed=0, split="test"), out / "synth_math.test.jsonl")
    write_jsonl(
        synthetic.word_problems(SYNTH_TRAIN_ROWS, seed=0, split="train"), out / "synth_math.train.jsonl"
    )


def _prep_synth_ppl(root: Path | None, out: Path) -> None:
    """The held-out word problems of sdd_synth_math, each ``question + "\\n" + answer`` as one page."""
    rows = synthetic.word_problems(SYNTH_TEST_ROWS, seed=0, split="test")
    write_jsonl(({"page": r["question"] + "\n" + r["answer"]} for r in rows), out / "synth_ppl.test.jsonl")


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
    write_jsonl(({"page": p} for p in pages), out / "wikitext2.test.jsonl")


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


def _prep_key(root: Path | None, spec: TaskSpec) -> str:
    """The cache key of a task's prepared data: its source files, or the generator of embedded data."""
    if spec.sources:
        inputs = {rel: fingerprint(root / rel) for rel in spec.sources}  # type: ignore[operator]
    else:  # embedded data: regenerate when the generator changes
        inputs = {"generator": fingerprint(synthetic.__file__)}
    return fingerprint({"v": PREP_VERSION, "sources": inputs})


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


def _stamp(task: str) -> str:
    """The file in the data folder that marks ``task``'s data as prepared (it records the key)."""
    return f"{task}.stamp.json"


def _prepare_task(task: str, root: Path | None, key: str, data: Path) -> None:
    log.info("preparing data of %s into %s", task, data)
    PREPARERS[task](root, data)
    write_json_atomic(data / _stamp(task), {"task": task, "key": key})


def prepare_tasks(tasks: Sequence[str], data_root: str | os.PathLike | None = None) -> Path:
    """Convert the data of the requested ``sdd_*`` tasks and render their YAMLs; returns the folder.

    The folder (in the cache, one per data root) is what ``TaskManager(include_path=...)`` reads.
    Conversions are redone only when a source file changed (one process at a time per folder).
    """
    root = check_task_data(tasks, data_root)
    folder = cache_dir() / "lm_eval_tasks" / stable_hash({"root": str(root), "v": PREP_VERSION}, 12)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for t in _local_tasks(tasks):
        key = _prep_key(root, TASKS[t])
        cached_artifact(data, partial(_prepare_task, t, root, key), _stamp(t), key=key, in_place=True)
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


def task_fingerprint(folder: Path, task: str) -> str:
    """Fingerprint of the rendered YAML(s) and prepared data of a local task ("" for stock tasks)."""
    if not task.startswith("sdd_"):
        return ""
    if task.startswith("sdd_mmlu"):
        name, rendered = "sdd_mmlu", folder / "sdd_mmlu"
    else:
        name, rendered = task, folder / f"{task}.yaml"
    return fingerprint([fingerprint(p) for p in (rendered, folder / "data" / _stamp(name)) if p.exists()])


def clear_prepared_tasks() -> None:
    """Delete every rendered task folder (they are re-created on demand)."""
    shutil.rmtree(cache_dir() / "lm_eval_tasks", ignore_errors=True)

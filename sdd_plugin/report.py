"""One Markdown page for a run: pruning, block scores, distillation, evaluation, merge, spec-dec.

``build_report(run_dir)`` walks ``run_dir`` for the artifacts the stages write (by file name),
renders a section for each kind that exists (figures linked by relative path, companion Markdown
tables embedded) and lists what was not found. A benchmark's run folder (``sdd bench``, ``sdd demo``:
a ``results.json`` at its top) gets the benchmark's own page instead
(``sdd_plugin.bench.report_sections``); this module is the one writer of ``REPORT.md``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .cache import write_text_atomic


@dataclass(frozen=True)
class Artifact:
    """A kind of file a stage writes: its name, section title and companion files."""

    key: str
    filename: str
    title: str
    figures: tuple[str, ...] = ()  # sibling PNGs to link
    markdown: str | None = None  # sibling Markdown to embed


ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("prune", "sdd_prune.json", "Pruning", figures=("heatmap.png",)),
    Artifact("score", "score.json", "Block scores", figures=("heatmap.png",), markdown="score.md"),
    Artifact("distill", "distill_report.json", "Self-data distillation", markdown="distill_report.md"),
    Artifact("eval", "eval_results.json", "Evaluation", markdown="eval_results.md"),
    Artifact("recovery", "recovery.json", "Recovery", figures=("recovery.png",), markdown="recovery.md"),
    Artifact("merge", "sdd_merge.json", "Merge"),
    Artifact(
        "specdec", "specdec.json", "Speculative decoding", figures=("specdec.png",), markdown="specdec.md"
    ),
)

#: keys of distill_report.json shown first, with labels
DISTILL_KEYS = {
    "rows": "rows",
    "accepted": "accepted rewrites",
    "acceptance_rate": "acceptance rate",
    "fallbacks": "fallbacks to the original",
    "mean_generated_tokens": "mean generated tokens",
    "tokens_per_s": "generation tokens/s",
    "nll_original": "NLL of original responses",
    "nll_distilled": "NLL of distilled responses",
}

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}

#: a benchmark's results at the top of its run folder
BENCHMARK_RESULTS = "results.json"


def find_artifacts(run_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """``{artifact key: [paths]}`` for every known artifact file under ``run_dir`` (sorted)."""
    root = Path(run_dir)
    names = {a.filename: a.key for a in ARTIFACTS}
    found: dict[str, list[Path]] = {a.key: [] for a in ARTIFACTS}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if f in names:
                found[names[f]].append(Path(dirpath) / f)
    return found


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    s = str(v).replace("|", "\\|").replace("\n", " ")
    return f"`{s}`" if s and ("/" in s or s.startswith(".")) else s


def _is_small(v: Any) -> bool:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return not isinstance(v, str) or len(v) <= 200
    if isinstance(v, (list, tuple)):
        return len(v) <= 16 and all(isinstance(x, (int, float, str, bool)) for x in v)
    return False


def kv_table(data: dict, keys: dict[str, str] | None = None, prefix: str = "") -> list[str]:
    """A two-column Markdown table of the small scalar entries of ``data`` (nested dicts dotted)."""
    rows: list[tuple[str, str]] = []
    if keys:
        rows += [(label, _fmt(data[k])) for k, label in keys.items() if k in data and _is_small(data[k])]

    def walk(d: dict, pre: str, depth: int) -> None:
        for k, v in d.items():
            if keys and not pre and k in keys:
                continue
            if isinstance(v, dict) and depth < 1:
                walk(v, f"{pre}{k}.", depth + 1)
            elif _is_small(v):
                rows.append((f"{pre}{k}", _fmt(v)))

    walk(data, prefix, 0)
    if not rows:
        return []
    return ["| key | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _demote(md: str, levels: int = 2) -> str:
    """Push Markdown headings down so embedded pages nest under a report section."""
    out = []
    for line in md.splitlines():
        if line.startswith("#"):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out).strip()


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _relink(md: str, folder: Path, base: Path) -> tuple[str, set[Path]]:
    """Rewrite relative links of Markdown written in ``folder`` so they resolve from ``base``."""
    targets: set[Path] = set()

    def fix(m: re.Match) -> str:
        link = m.group(2)
        if re.match(r"^([a-z]+:|/|#)", link):
            return m.group(0)
        target = (folder / link).resolve()
        targets.add(target)
        return f"{m.group(1)}{_rel(target, base)}{m.group(3)}"

    return _LINK.sub(fix, md), targets


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return {"error": f"could not read {path.name}: {exc}"}


def _eval_lines(data: dict) -> list[str]:
    from .evaluate import format_score, higher_is_better, metric_label, percent

    s = data.get("settings", {})
    lines = [
        f"Model `{data.get('model')}`, lm-eval {data.get('lm_eval_version')}, limit {data.get('limit')}, "
        f"chat template {'on' if s.get('apply_chat_template') else 'off'}.",
        "",
        "| task | metric | shots | n | score | ± stderr | chance |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t, r in (data.get("tasks") or {}).items():
        hib = higher_is_better(dict(r, task=t))
        lines.append(
            f"| {t} | {metric_label(r.get('metric'), hib)} | {r.get('shots')} | {r.get('n')} | "
            f"{format_score(r.get('value'), hib)} | {format_score(r.get('stderr'), hib)} | {percent(r.get('chance'))} |"
        )
    return lines


def _section(a: Artifact, paths: list[Path], base: Path, shown_figures: set[Path]) -> list[str]:
    lines = [f"## {a.title}", ""]
    for p in paths:
        folder = p.parent
        lines += [f"From `{_rel(p, base)}`:", ""]
        data = _load(p)
        md = folder / a.markdown if a.markdown else None
        if a.key == "eval" and isinstance(data, dict) and "tasks" in data:
            lines += _eval_lines(data)
        elif md is not None and md.is_file():
            text, targets = _relink(md.read_text(encoding="utf-8"), folder.resolve(), base)
            shown_figures.update(targets)
            lines.append(_demote(text, 2))
        elif isinstance(data, dict):
            lines += kv_table(data, DISTILL_KEYS if a.key == "distill" else None)
        else:
            lines.append(
                f"({type(data).__name__} with {len(data)} entries)" if hasattr(data, "__len__") else ""
            )
        lines.append("")
        for fig in a.figures:
            fp = (folder / fig).resolve()
            if fp.is_file() and fp not in shown_figures:
                shown_figures.add(fp)
                lines += [f"![{a.title}: {fig}]({_rel(fp, base)})", ""]
    return lines


def benchmark_results(run_dir: str | os.PathLike) -> dict | None:
    """The recovery benchmark's results when ``run_dir`` is a benchmark's run folder, else None."""
    path = Path(run_dir) / BENCHMARK_RESULTS
    if not path.is_file():
        return None
    from .bench.report_sections import is_recovery_results

    data = _load(path)
    return data if is_recovery_results(data) else None


def drift_results(run_dir: str | os.PathLike) -> dict | None:
    """The forgetting-curve study's results when ``run_dir`` is its run folder, else None."""
    path = Path(run_dir) / BENCHMARK_RESULTS
    if not path.is_file():
        return None
    data = _load(path)
    return data if isinstance(data, dict) and data.get("kind") == "drift" else None


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``REPORT.md`` (default ``run_dir/REPORT.md``) gathering a run's artifacts; returns its path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    out_path = Path(out) if out is not None else root / "REPORT.md"
    if out_path.is_dir() or (out is not None and out_path.suffix.lower() != ".md"):
        out_path = out_path / "REPORT.md"
    base = out_path.parent.resolve()
    benchmark = benchmark_results(root)
    if benchmark is not None:
        from .bench.report_sections import render_recovery_report

        write_text_atomic(out_path, render_recovery_report(benchmark, root.resolve(), base))
        return out_path
    drift = drift_results(root)
    if drift is not None:
        from .bench.drift_report import render

        write_text_atomic(out_path, render(drift))
        return out_path
    found = find_artifacts(root.resolve())
    lines = [
        f"# SDD run report: {root.resolve().name}",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} from `{root}`.",
        "",
    ]
    shown: set[Path] = set()
    for a in ARTIFACTS:
        if found[a.key]:
            lines += _section(a, found[a.key], base, shown)
    missing = [f"{a.title} (`{a.filename}`)" for a in ARTIFACTS if not found[a.key]]
    lines += [
        "---",
        "",
        "Not found: " + (", ".join(missing) if missing else "nothing; every stage is present") + ".",
    ]
    write_text_atomic(out_path, "\n".join(lines) + "\n")
    return out_path

"""Acceptance per try of a distillation run: rows tried, accepted and rejected (by reason) at the
first pass (try 0) and at each sampled retry of the rows still rejected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def try_summary(attempt: int, reasons: Sequence[str | None]) -> dict[str, Any]:
    """One try's entry of the report: rows tried, accepted (reason ``None``), rejected by reason."""
    rejected = Counter(r for r in reasons if r is not None)
    return {
        "try": attempt,
        "rows": len(reasons),
        "accepted": sum(1 for r in reasons if r is None),
        "rejected": dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def acceptance_markdown(report: dict[str, Any]) -> list[str]:
    """The report's per-try table as Markdown lines (none when the report has no tries)."""
    tries = report.get("acceptance_by_try")
    if not tries:
        return []
    lines = ["", "## Acceptance per try (0 = the first pass; later tries re-sample rejected rows)", ""]
    lines += ["| try | rows | accepted | rejected (reasons) |", "|---|---|---|---|"]
    for t in tries:
        why = ", ".join(f"{r} {c}" for r, c in t["rejected"].items()) or "–"
        lines.append(f"| {t['try']} | {t['rows']} | {t['accepted']} | {why} |")
    lines.append(f"| fell back | {report['fell_back']} | | |")
    return lines

"""sdd report: one Markdown page from a run folder (real eval output + hand-made stage JSONs)."""

from __future__ import annotations

import json
import re

import pytest

from sdd_plugin.evaluate import evaluate, recovery_table, write_recovery
from sdd_plugin.report import build_report, find_artifacts, kv_table


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[0, 1], [1, 0]])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture(scope="module")
def run_dir(tiny_models, tmp_path_factory):
    """A run folder: a real tiny eval + recovery, plus stage JSONs with the documented keys."""
    run = tmp_path_factory.mktemp("run")
    model = tiny_models("llama", 2)
    base = evaluate(model, ["sdd_synth_mc"], limit=2, out=run / "eval" / "base")
    cut = json.loads(json.dumps(base))
    cut["model"] = "pruned-model"
    cut["tasks"]["sdd_synth_mc"]["value"] = 0.5 * (base["tasks"]["sdd_synth_mc"]["value"] or 1.0)
    write_recovery(recovery_table(cut, base), run / "eval")
    prune_dir = run / "pruned"
    prune_dir.mkdir()
    (prune_dir / "sdd_prune.json").write_text(
        json.dumps(
            {
                "source_model": "smollm2-135m-instruct",
                "removed_blocks": [2, 3, 4, 5, 6, 7],
                "num_layers_before": 30,
                "num_layers_after": 24,
                "params_before": 134515008,
                "params_after": 113274432,
                "metric": "angular",
                "table": [[0.1] * 30] * 10,  # big nested data is left out of the page
            }
        )
    )
    _png(prune_dir / "heatmap.png")
    (run / "distill").mkdir()
    (run / "distill" / "distill_report.json").write_text(
        json.dumps(
            {
                "rows": 200,
                "accepted": 150,
                "acceptance_rate": 0.75,
                "fallbacks": 50,
                "mean_generated_tokens": 87.5,
                "tokens_per_s": 41.2,
                "nll_original": 1.93,
                "nll_distilled": 1.21,
            }
        )
    )
    # spec-dec writes its own Markdown with a link relative to its folder
    (run / "specdec").mkdir()
    (run / "specdec" / "specdec.json").write_text(json.dumps({"summary": {"acceptance_rate": 0.6}}))
    (run / "specdec" / "specdec.md").write_text(
        "# Speculative decoding\n\n| acceptance rate | 0.600 |\n\n![specdec](specdec.png)\n"
    )
    _png(run / "specdec" / "specdec.png")
    (run / "merged").mkdir()
    (run / "merged" / "sdd_merge.json").write_text(json.dumps({"method": "slerp", "parameters": {"t": 0.5}}))
    return run


def test_find_artifacts(run_dir):
    found = find_artifacts(run_dir)
    assert [p.name for p in found["eval"]] == ["eval_results.json"]
    assert found["recovery"] and found["prune"] and found["distill"] and found["merge"]
    assert found["specdec"] and found["score"] == []


def test_build_report_sections_links_and_missing(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "REPORT.md"
    md = path.read_text()
    for title in ("## Pruning", "## Self-data distillation", "## Evaluation", "## Recovery", "## Merge"):
        assert title in md
    assert "## Speculative decoding" in md and "## Block scores" not in md
    assert re.search(r"Not found: Block scores \(`score.json`\)\.", md)
    # embedded stage Markdown: headings demoted, its figure link rebased and not repeated
    assert "### Speculative decoding" in md and md.count("specdec/specdec.png") == 1
    # documented distill keys with labels, pruning scalars, nested merge parameters
    assert "| acceptance rate | 0.75 |" in md and "| NLL of distilled responses | 1.21 |" in md
    assert "| removed_blocks | [2, 3, 4, 5, 6, 7] |" in md and "| parameters.t | 0.5 |" in md
    assert "table" not in re.findall(r"^\| (\w+) \|", md, flags=re.M)
    # eval table from the real run and the embedded recovery page (headings demoted)
    assert "| sdd_synth_mc | acc | 0 | 2 |" in md
    assert "### Recovery against `" in md and "above-chance recovery" in md
    # every linked figure exists relative to the report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"pruned/heatmap.png", "eval/recovery.png", "specdec/specdec.png"} <= set(links)
    for link in links:
        assert (path.parent / link).is_file(), link


def test_report_out_elsewhere_keeps_links_valid(run_dir, tmp_path):
    path = build_report(run_dir, out=tmp_path / "docs" / "run.md")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())
    assert links and all((path.parent / link).is_file() for link in links)


def test_empty_run_and_errors(tmp_path, capsys):
    from sdd_plugin.cli import main

    (tmp_path / "empty").mkdir()
    md = build_report(tmp_path / "empty").read_text()
    assert "Not found: Pruning" in md and "## " not in md
    with pytest.raises(FileNotFoundError, match="nope"):
        build_report(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").is_file()


def test_kv_table_skips_large_values():
    rows = kv_table({"a": 1, "b": list(range(100)), "c": {"d": 2.5, "e": {"f": 1}}, "g": "x" * 500})
    assert rows[2:] == ["| a | 1 |", "| c.d | 2.5 |"]

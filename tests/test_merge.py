"""sdd merge: LoRA fine-tunes of a pruned tiny model merged with mergekit (SLERP, TIES); layout checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdd_plugin.merge import merge_models, model_layout
from sdd_plugin.prune import prune

TENSOR = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private sdd cache so the LoRA-merge cache starts empty (and can be inspected)."""
    from sdd_plugin.cache import cache_dir

    root = tmp_path_factory.mktemp("sdd-cache")
    (root / "models").symlink_to(
        cache_dir() / "models", target_is_directory=True
    )  # the converted default model
    old = os.environ.get("SDD_CACHE_DIR")
    os.environ["SDD_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SDD_CACHE_DIR", None)
    else:
        os.environ["SDD_CACHE_DIR"] = old


def _prune(src: Path, start: int, out: Path) -> Path:
    res = prune(src, num_blocks=1, start=start, out=out, num_samples=4, max_length=32)
    return Path(res.out_dir)


def _lora(base: Path, out: Path, seed: int, text: str) -> Path:
    """A real LoRA fine-tune: a few AdamW steps on one text, so adapters differ from each other."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
    peft_model = get_peft_model(model, cfg)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = tok([text], return_tensors="pt")
    for _ in range(3):
        peft_model(**batch, labels=batch["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.save_pretrained(out)
    return out


def _peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def pruned_and_adapters(tiny_models, tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("merge")
    src = tiny_models("llama", 6)
    pruned = _prune(src, 2, root / "pruned")
    a = _lora(pruned, root / "lora_a", 1, "The cat sat on the mat and looked at the moon.")
    b = _lora(pruned, root / "lora_b", 2, "Two plus two equals four, and four plus four is eight.")
    return root, pruned, a, b


def _generates(folder: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(["Hello there"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    return tok.decode(out[0])


def test_slerp_merges_two_lora_finetunes_of_the_pruned_model(pruned_and_adapters):
    root, pruned, a, b = pruned_and_adapters
    out = merge_models([a, b], method="slerp", out=root / "slerp", t=0.5)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "mergekit.yaml",
        "sdd_merge.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    record = json.loads((out / "sdd_merge.json").read_text())
    assert record["method"] == "slerp" and record["params"] == {"t": 0.5}
    assert [i["kind"] for i in record["inputs"]] == ["lora", "lora"]
    assert record["layout"]["removed_blocks"] == [2]
    assert model_layout(out)["removed_blocks"] == [2]  # provenance carried over
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    _generates(out)

    wa, wb = _peft_merged(pruned, a)[TENSOR], _peft_merged(pruned, b)[TENSOR]
    merged = load_file(out / "model.safetensors")[TENSOR]
    assert not torch.allclose(wa, wb)
    assert not torch.allclose(merged, wa) and not torch.allclose(merged, wb)

    # SLERP treats each tensor as one vector: the merged tensor lies on the arc between the two
    # fine-tuned tensors (a positive combination: the two angles add up to the angle between them)
    def angle(x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.flatten().double(), y.flatten().double()
        return float(torch.acos((x @ y / (x.norm() * y.norm())).clamp(-1, 1)))

    ab, ma, mb = angle(wa, wb), angle(merged, wa), angle(merged, wb)
    assert ab > 0.05  # really different directions, not mergekit's linear fallback
    assert ma + mb == pytest.approx(ab, rel=1e-4)
    assert 0.4 * ab < ma < 0.6 * ab and 0.4 * ab < mb < 0.6 * ab
    # the closed form sin((1-t)θ)/sinθ·a + sin(tθ)/sinθ·b, which is NOT the plain average
    coef = torch.sin(torch.tensor(ab / 2, dtype=torch.float64)) / torch.sin(
        torch.tensor(ab, dtype=torch.float64)
    )
    torch.testing.assert_close(merged.double(), coef * (wa.double() + wb.double()), atol=1e-6, rtol=1e-5)
    assert (merged - (wa + wb) / 2).abs().max() > 1e-4

    # same settings again: reused, not recomputed
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert merge_models([a, b], method="slerp", out=root / "slerp", t=0.5) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_ties_merge_infers_base_and_elects_signs(pruned_and_adapters):
    from sdd_plugin.cli import main

    root, pruned, a, b = pruned_and_adapters
    out = root / "ties"
    args = ["merge", str(a), str(b), "--method", "ties", "--densities", "1.0", "--weights", "1", "1"]
    assert main(args + ["--out", str(out)]) == 0
    record = json.loads((out / "sdd_merge.json").read_text())
    assert Path(record["base_model"]).resolve() == pruned.resolve()
    assert "ties" in (out / "mergekit.yaml").read_text()
    _generates(out)

    base = load_file(pruned / "model.safetensors")[TENSOR]
    da = _peft_merged(pruned, a)[TENSOR] - base
    db = _peft_merged(pruned, b)[TENSOR] - base
    delta = load_file(out / "model.safetensors")[TENSOR] - base
    assert delta.abs().max() > 0
    agree = (da.sign() == db.sign()) & (da != 0)
    assert agree.any() and (~agree).any()
    # TIES with density 1: where both task vectors agree in sign, the merge is their mean ...
    torch.testing.assert_close(delta[agree], ((da + db) / 2)[agree], atol=1e-5, rtol=1e-4)
    # ... and where they disagree, only the delta with the elected (summed) sign survives
    elected = torch.where((da + db) >= 0, torch.maximum(da, db), torch.minimum(da, db))
    torch.testing.assert_close(delta[~agree], elected[~agree], atol=1e-5, rtol=1e-4)


def test_different_layer_counts_refused_before_mergekit(tiny_models, tmp_path, cache):
    from sdd_plugin.cli import main

    six, five = tiny_models("llama", 6), tiny_models("llama", 5)
    with pytest.raises(ValueError, match="num_hidden_layers") as err:
        merge_models([six, five], method="slerp", out=tmp_path / "m")
    assert str(six) in str(err.value) and str(five) in str(err.value)
    assert not (tmp_path / "m").exists()
    assert main(["merge", str(six), str(five), "--out", str(tmp_path / "m")]) == 2


def test_same_count_different_removed_blocks_refused(tiny_models, tmp_path, cache):
    src = tiny_models("llama", 6)
    p1, p3 = _prune(src, 1, tmp_path / "p1"), _prune(src, 3, tmp_path / "p3")
    assert model_layout(p1)["num_hidden_layers"] == model_layout(p3)["num_hidden_layers"] == 5
    a = _lora(p1, tmp_path / "lora_p1", 1, "alpha beta gamma")
    b = _lora(p3, tmp_path / "lora_p3", 2, "delta epsilon")
    with pytest.raises(ValueError, match=r"removed blocks.*\[1\].*\[3\]"):
        merge_models([a, b], method="ties", out=tmp_path / "m", base_model=p1)
    # raised before any adapter was merged into weights or mergekit ran
    assert not list(cache.glob("lora-merged/lora_p*"))
    assert not (tmp_path / "m").exists()


def test_bad_arguments(tiny_models, tmp_path):
    m = tiny_models("llama", 6)
    with pytest.raises(ValueError, match="method"):
        merge_models([m, m], method="average", out=tmp_path / "x")
    with pytest.raises(ValueError, match="exactly 2"):
        merge_models([m, m, m], method="slerp", out=tmp_path / "x")
    with pytest.raises(ValueError, match="t must be"):
        merge_models([m, m], method="slerp", t=1.5, out=tmp_path / "x")
    with pytest.raises(ValueError, match="densities has 1 values"):
        merge_models([m, m], method="ties", densities=[0.5], base_model=m, out=tmp_path / "x")
    with pytest.raises(ValueError, match="base model"):
        merge_models([m, m], method="ties", out=tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        merge_models([m, tmp_path / "missing"], method="slerp", out=tmp_path / "x")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="exists and is not empty"):
        merge_models([m, m], method="slerp", out=tmp_path / "x")

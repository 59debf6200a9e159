"""Settings of the recovery benchmark: the fine-tuning sets, the ``Preset`` model and the named presets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator


class TrainSet(BaseModel):
    """One fine-tuning set of the benchmark."""

    name: str = Field(description="short name used in stage and model labels, e.g. 'gsm8k'")
    source: str = Field(description="'synthetic', a file under the data root, or a hub id")
    format: str = Field(description="sdd format of the source rows: gsm8k, dolly, alpaca")
    template: str = Field(description="distillation template: math or general")
    rows: int = Field(ge=1)


class Preset(BaseModel):
    """All settings of one benchmark run (hashed into the stage keys)."""

    name: str
    model: str = "smollm2-135m-instruct"
    num_blocks: int = 6
    metric: str = "angular"
    calibration: str | None = None
    calibration_samples: int = 64
    train_sets: list[TrainSet]
    # training (identical for SFT and SDD)
    epochs: float = 1
    max_steps: int | None = None
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    sequence_len: int = 384
    seed: int = 0
    #: weights dtype of teacher generation, training (autocast) and evaluation -- all models of a
    #: run share it. bfloat16 is fast only where the CPU has native bf16 matmuls (emulated elsewhere);
    #: "auto" picks bfloat16 only there (resolved at run start, so the stage keys and the report
    #: carry the dtype actually used)
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    #: training checkpoint every N optimizer steps (kept: the last one) so a stopped run resumes
    #: mid-training; 0 = no checkpoints
    save_steps: int = Field(25, ge=0)
    # distillation
    distill_max_new_tokens: int = 192
    distill_batch_size: int = 16
    #: sampled re-generations of rejected rewrites (0 = greedy only, as in the paper)
    distill_retries: int = 0
    # evaluation
    eval_tasks: list[str]
    eval_limit: int | None = None
    #: per-task limits overriding eval_limit (for sdd_mmlu it is per subject: 57 subjects)
    eval_task_limits: dict[str, int] = Field(default_factory=dict)
    eval_shots: dict[str, int] = Field(default_factory=dict)
    eval_batch_size: int = 8
    # speculative decoding
    specdec_prompts: int = 8
    specdec_max_new_tokens: int = 48
    merge: bool = True

    @model_validator(mode="after")
    def _limits_name_evaluated_tasks(self) -> Preset:
        for key in ("eval_task_limits", "eval_shots"):
            extra = sorted(set(getattr(self, key)) - set(self.eval_tasks))
            if extra:
                raise ValueError(f"{key} names task(s) not in eval_tasks: {', '.join(extra)}")
        return self


def _preset_quick() -> Preset:
    return Preset(
        name="quick",
        calibration="wikitext2/wiki.test.raw",
        train_sets=[
            TrainSet(name="gsm8k", source="gsm8k/train.jsonl", format="gsm8k", template="math", rows=48),
            TrainSet(
                name="dolly",
                source="dolly/databricks-dolly-15k.citations-stripped.jsonl.gz",
                format="dolly",
                template="general",
                rows=48,
            ),
        ],
        epochs=1,
        distill_max_new_tokens=160,
        eval_tasks=[
            "sdd_arc_easy",
            "sdd_arc_challenge",
            "sdd_hellaswag",
            "sdd_winogrande",
            "sdd_truthfulqa_mc2",
            "sdd_mmlu",
            "sdd_gsm8k",
        ],
        eval_limit=30,
        # MMLU's limit is per subject (57 subjects); generative GSM8K and TruthfulQA mc2 (6-shot
        # prompt, many choices) are the slow ones on CPU
        eval_task_limits={"sdd_mmlu": 2, "sdd_gsm8k": 10, "sdd_truthfulqa_mc2": 20},
        eval_shots={
            "sdd_arc_challenge": 0,
            "sdd_hellaswag": 0,
            "sdd_winogrande": 0,
            "sdd_mmlu": 0,
            "sdd_gsm8k": 0,
        },
        specdec_prompts=4,
        specdec_max_new_tokens=32,
    )


def _preset_large() -> Preset:
    """Paper-like sizing: 1,024 rows per set, 2 epochs; needs a machine whose disk survives between
    sessions (every stage resumes)."""
    quick = _preset_quick()
    sets = [ts.model_copy(update={"rows": 1024}) for ts in quick.train_sets]
    return quick.model_copy(
        update={
            "name": "large",
            "train_sets": sets,
            "epochs": 2,
            "distill_max_new_tokens": 256,
            # more rewrites on the teacher's own distribution: 2 sampled retries of rejected rows;
            # bigger batches for the decode engine
            "distill_retries": 2,
            "distill_batch_size": 32,
            # bf16 where the CPU has native bf16, float32 elsewhere
            "dtype": "auto",
            "eval_limit": 300,
            "eval_task_limits": {"sdd_mmlu": 10, "sdd_gsm8k": 100, "sdd_truthfulqa_mc2": 150},
            "eval_shots": {"sdd_arc_challenge": 0, "sdd_hellaswag": 0, "sdd_gsm8k": 0},
            "specdec_prompts": 16,
            "specdec_max_new_tokens": 64,
        }
    )


def _preset_full() -> Preset:
    """The largest run meant for one sitting on a small CPU: 128 GSM8K and 96 Dolly rows, 1 epoch,
    0-shot evals with the item budget spent where the 135M model is above chance (ARC-Easy,
    HellaSwag)."""
    large = _preset_large()
    # Dolly rows are longer (general template, up to 256 new tokens): fewer of them keeps the two
    # sets' distillation and training times about equal
    rows = {"gsm8k": 128, "dolly": 96}
    sets = [ts.model_copy(update={"rows": rows[ts.name]}) for ts in large.train_sets]
    return large.model_copy(
        update={
            "name": "full",
            "train_sets": sets,
            "epochs": 1,
            "eval_limit": 100,
            "eval_task_limits": {
                "sdd_arc_easy": 400,
                "sdd_hellaswag": 300,
                "sdd_mmlu": 1,
                # generative GSM8K and TruthfulQA mc2 are the slow ones and at chance for a model
                # of this size: kept in the suite, small
                "sdd_gsm8k": 5,
                "sdd_truthfulqa_mc2": 10,
            },
            "eval_shots": dict.fromkeys(
                ["sdd_arc_challenge", "sdd_hellaswag", "sdd_winogrande", "sdd_mmlu", "sdd_gsm8k"], 0
            ),
            "specdec_prompts": 4,
            "specdec_max_new_tokens": 48,
        }
    )


def _preset_demo() -> Preset:
    return Preset(
        name="demo",
        calibration=None,
        calibration_samples=32,
        train_sets=[
            TrainSet(name="wordproblems", source="synthetic", format="gsm8k", template="math", rows=48)
        ],
        max_steps=6,
        distill_max_new_tokens=128,
        # Bits per byte on held-out problems separates pruned from unpruned; sdd_synth_mc is at
        # chance for a 135M model (noise, not signal), so the demo leaves it out.
        eval_tasks=["sdd_synth_ppl"],
        eval_limit=100,
        merge=False,
        specdec_prompts=4,
        specdec_max_new_tokens=32,
    )


PRESETS: dict[str, Callable[[], Preset]] = {
    "demo": _preset_demo,
    "quick": _preset_quick,
    "full": _preset_full,
    "large": _preset_large,
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """The preset ``name`` with field ``overrides`` applied (validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    data = PRESETS[name]().model_dump()
    unknown = [k for k in overrides if k not in Preset.model_fields]
    if unknown:
        raise ValueError(f"unknown preset setting(s) {unknown}; known: {', '.join(Preset.model_fields)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Preset.model_validate(data)

"""Settings of the forgetting-curve study: its arms, the ``DriftPreset`` model and the named presets.

An :class:`Arm` is one model line of the curves: the pruned model, or a fine-tune that differs from
the other trained arms only in a few recipe keys (a knowledge-distillation arm is one more
:data:`ARMS` entry). ``default`` is the study that fits one sitting; ``quick`` checks it end to end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Arm:
    """One arm of the study: ``recipe`` holds the only recipe keys in which trained arms differ
    (None: not trained); ``distilled`` arms need the self-distilled rows first."""

    name: str
    description: str
    recipe: dict[str, Any] | None = None
    distilled: bool = False


#: The arms a preset can name (a knowledge-distillation arm adds an entry here).
ARMS: dict[str, Arm] = {
    "pruned": Arm("pruned", "the pruned model, not fine-tuned"),
    "sft": Arm("sft", "LoRA/full fine-tune on the original responses", {"sdd_distill": False}),
    "sdd": Arm("sdd", "the same fine-tune on self-distilled responses", {"sdd_distill": True}, True),
}
#: (arm, baseline arm) whose difference the study reports with paired intervals
COMPARED = ("sdd", "sft")


class DriftPreset(BaseModel):
    """All settings of one study (hashed into the stage keys)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str = "smollm2-135m-instruct"
    num_blocks: int = Field(6, ge=1)
    metric: str = "angular"
    calibration: str | None = "wikitext2/wiki.test.raw"
    calibration_samples: int = Field(64, ge=1)
    train_set: Literal["gsm8k", "dolly", "alpaca"] = "gsm8k"
    rows: int = Field(512, ge=8)
    arms: list[str] = Field(default_factory=lambda: ["pruned", "sft", "sdd"])
    #: "lora": adapters (r / alpha below); "full": every weight, no adapter
    regime: Literal["lora", "full"] = "lora"
    #: optimizer steps at which every arm is measured; training runs to the last one
    checkpoints: list[int] = Field(default_factory=lambda: [10, 20, 40, 80, 160, 320])
    #: None: 2e-4 for LoRA, 2e-5 for a full fine-tune
    learning_rate: float | None = Field(None, gt=0)
    lora_r: int = 16
    lora_alpha: int = 32
    micro_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    #: None: the shortest cap that keeps ``sequence_coverage`` of the SFT and SDD rows whole
    sequence_len: int | None = Field(None, ge=16)
    sequence_coverage: float = Field(0.95, gt=0, le=1)
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "auto"] = "auto"
    distill_max_new_tokens: int = Field(256, ge=1)
    distill_batch_size: int = Field(32, ge=1)
    distill_retries: int = Field(3, ge=0)
    #: None: by template (math / general); "math_strict" also checks intermediate results
    distill_checker: str | None = None
    instruct_docs: int = Field(96, ge=1)
    instruct_max_new_tokens: int = Field(192, ge=1)
    wikitext_docs: int = Field(128, ge=1)
    wikitext_tokens: int = Field(256, ge=16)
    gsm8k_docs: int = Field(128, ge=1)
    measure_batch_size: int = Field(8, ge=1)
    #: task -> items (None: the whole split)
    choice_items: dict[Literal["arc_easy", "hellaswag"], int | None] = Field(
        default_factory=lambda: {"arc_easy": None, "hellaswag": 2000}
    )
    #: checkpoints whose accuracy is measured (None: a middle one and the last)
    choice_steps: list[int] | None = None
    choice_batch_size: int = Field(16, ge=1)
    bootstrap: int = Field(2000, ge=100)
    throughput_batch: int = Field(4, ge=1)
    throughput_prompt_tokens: int = Field(256, ge=8)
    throughput_new_tokens: int = Field(64, ge=2)

    @model_validator(mode="after")
    def _consistent(self) -> DriftPreset:
        if sorted(set(self.checkpoints)) != self.checkpoints or self.checkpoints[0] < 1:
            raise ValueError(f"checkpoints must be increasing positive steps, got {self.checkpoints}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"arms: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
        if "pruned" not in self.arms or not any(ARMS[a].recipe for a in self.arms):
            raise ValueError("arms: the study needs 'pruned' (the KL-recovery reference) and a trained arm")
        bad = sorted(set(self.choice_steps or []) - set(self.checkpoints))
        if bad:
            raise ValueError(f"choice_steps {bad} are not checkpoints {self.checkpoints}")
        return self

    @property
    def max_steps(self) -> int:
        return self.checkpoints[-1]

    @property
    def accuracy_steps(self) -> list[int]:
        """``choice_steps``, or a middle checkpoint and the last."""
        if self.choice_steps is not None:
            return list(self.choice_steps)
        return sorted({self.checkpoints[len(self.checkpoints) // 2], self.checkpoints[-1]})

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.regime == "lora" else 2e-5)

    @property
    def save_steps(self) -> int:
        """Axolotl saves every ``gcd(checkpoints)`` steps; the study keeps only its checkpoints."""
        return math.gcd(*self.checkpoints)

    @property
    def epochs(self) -> int:
        return math.ceil(
            self.max_steps * self.micro_batch_size * self.gradient_accumulation_steps / self.rows
        )


def _preset_default() -> DriftPreset:
    """512 GSM8K rows, 320 LoRA steps (5 epochs), six log-spaced checkpoints."""
    return DriftPreset(name="default")


def _preset_quick() -> DriftPreset:
    """A sanity check of the whole study (minutes): 64 rows, 40 steps, three checkpoints."""
    return DriftPreset(
        name="quick",
        rows=64,
        checkpoints=[10, 20, 40],
        distill_max_new_tokens=192,
        distill_retries=1,
        instruct_docs=24,
        instruct_max_new_tokens=128,
        wikitext_docs=24,
        gsm8k_docs=24,
        choice_items={"arc_easy": 100, "hellaswag": 100},
        bootstrap=1000,
        throughput_new_tokens=32,
    )


DRIFT_PRESETS: dict[str, Callable[[], DriftPreset]] = {"default": _preset_default, "quick": _preset_quick}


def get_drift_preset(name: str, **overrides: Any) -> DriftPreset:
    """The preset ``name`` with field ``overrides`` applied (validated; unknown keys named)."""
    if name not in DRIFT_PRESETS:
        raise ValueError(f"unknown drift preset {name!r}; known: {', '.join(DRIFT_PRESETS)}")
    unknown = [k for k in overrides if k not in DriftPreset.model_fields]
    if unknown:
        raise ValueError(f"unknown drift setting(s) {unknown}; known: {', '.join(DriftPreset.model_fields)}")
    data = DRIFT_PRESETS[name]().model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    return DriftPreset.model_validate(data)

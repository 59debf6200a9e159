"""Training the study's arms through ``axolotl train``: the recipe, the kept checkpoints, and the
launch of a full fine-tune.

:func:`study_recipe` is the recovery benchmark's recipe with the study's schedule (arms differ only
in their :data:`~.drift_presets.ARMS` keys); :class:`CheckpointKeeper` deletes, while the trainer
runs, the checkpoints the study does not measure (axolotl saves every ``gcd(checkpoints)`` steps).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from .drift_presets import ARMS, DriftPreset
from .presets import Preset, TrainSet


def study_recipe(
    preset: DriftPreset,
    arm: str,
    ts: TrainSet,
    data_file: Path,
    folder: Path,
    sequence_len: int,
    dtype: str,
    calibration: str | None,
) -> dict[str, Any]:
    """The recovery benchmark's recipe (:func:`recipe_for`) with this study's schedule: trained
    arms differ only in their :data:`ARMS` keys."""
    from .trainer import recipe_for

    base = Preset(
        name=f"drift-{preset.name}",
        model=preset.model,
        num_blocks=preset.num_blocks,
        metric=preset.metric,
        calibration=preset.calibration,
        calibration_samples=preset.calibration_samples,
        train_sets=[ts],
        epochs=preset.epochs,
        max_steps=preset.max_steps,
        learning_rate=preset.lr,
        lora_r=preset.lora_r,
        lora_alpha=preset.lora_alpha,
        micro_batch_size=preset.micro_batch_size,
        gradient_accumulation_steps=preset.gradient_accumulation_steps,
        sequence_len=sequence_len,
        seed=preset.seed,
        dtype=dtype,
        save_steps=preset.save_steps,
        distill_max_new_tokens=preset.distill_max_new_tokens,
        distill_batch_size=preset.distill_batch_size,
        distill_retries=preset.distill_retries,
        eval_tasks=[],
    )
    keys = ARMS[arm].recipe
    if keys is None:
        raise ValueError(f"arm {arm!r} is not trained")
    recipe = recipe_for(
        base, ts, data_file, folder, distill=bool(keys.get("sdd_distill")), calibration=calibration
    )
    recipe.update(keys)
    recipe.update(
        sdd_distill_checker=preset.distill_checker or ts.template,
        # the study measured the teacher NLL already (its distill stage)
        sdd_distill_measure_nll=False,
        # rows over the cap are cut, not dropped: every arm trains on the same row ids
        excess_length_strategy="truncate",
        pad_to_multiple_of=8,
    )
    recipe.pop("save_total_limit", None)  # the study keeps its own checkpoints (CheckpointKeeper)
    if preset.regime == "full":
        for key in [k for k in recipe if k == "adapter" or k.startswith("lora_")]:
            del recipe[key]
        recipe["output_dir"] = str(folder / "model")
    return recipe


# ---------------------------------------------------------------------------------- checkpoints


class CheckpointKeeper:
    """While a trainer writes ``checkpoint-<step>`` folders into ``out_dir``, delete the complete
    ones (``trainer_state.json`` written) whose step is not in ``keep`` -- except the newest, which
    a stopped run resumes from. ``strip_optimizer`` also deletes the optimizer state of kept
    checkpoints other than the newest (full fine-tunes: it is twice the model)."""

    def __init__(self, out_dir: Path, keep: set[int], strip_optimizer: bool = False, every: float = 5.0):
        self.out_dir, self.keep, self.strip, self.every = Path(out_dir), set(keep), strip_optimizer, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def complete(self) -> dict[int, Path]:
        """``{step: folder}`` of the complete checkpoints."""
        found = {}
        for p in self.out_dir.glob("checkpoint-*"):
            step = p.name.removeprefix("checkpoint-")
            if step.isdigit() and (p / "trainer_state.json").is_file():
                found[int(step)] = p
        return dict(sorted(found.items()))

    def sweep(self, final: bool = False) -> None:
        """One pass; ``final`` (training finished): the newest checkpoint is no longer special."""
        done = self.complete()
        newest = max(done) if done and not final else None
        for step, folder in done.items():
            if step == newest:
                continue
            if step not in self.keep:
                shutil.rmtree(folder, ignore_errors=True)
            elif self.strip:
                for f in folder.glob("optimizer.*"):
                    f.unlink(missing_ok=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sweep()

    def __enter__(self) -> CheckpointKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sweep()


def launch_full(recipe: dict, folder: Path) -> Path:
    """``axolotl train`` for a full fine-tune (:func:`axolotl_train` expects a LoRA adapter)."""
    from .trainer import launch_axolotl

    logf = launch_axolotl(recipe, folder)
    out = Path(recipe["output_dir"])
    if not (out / "config.json").is_file():
        raise RuntimeError(f"axolotl finished but wrote no model in {out}; see {logf}")
    return out

"""Training for the benchmark: the chat rows of a set, its Axolotl recipe, and ``axolotl train``.

SFT and SDD train from the same packaged CPU recipe (``recipes/smollm2-135m-cpu.yml`` in this
package) and differ only in ``sdd_distill``; ``axolotl train`` runs in its own process group so
that stopping the benchmark stops the trainer too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..checkpoints import is_adapter
from .presets import Preset, TrainSet

RECIPE_NAME = "smollm2-135m-cpu.yml"


def training_rows(ts: TrainSet, data_root: Path | None) -> list[dict]:
    """The first ``ts.rows`` rows of a set in chat ``messages`` layout (axolotl ``chat_template``),
    converted by :func:`sdd_plugin.distill.convert.convert_rows` (GSM8K ``<<calc>>`` annotations
    stripped: SFT and SDD, whose fallback is this same text, see the same cleaned originals)."""
    from ..distill.convert import convert_rows
    from ..distill.formats import load_rows

    if ts.source == "synthetic":
        from ..data.synthetic import word_problems

        raw = word_problems(ts.rows, seed=0, split="train")
    else:
        if data_root is None:
            raise FileNotFoundError(f"train set {ts.name!r} needs the data root (../shared/data)")
        path = data_root / ts.source
        if not path.is_file():
            raise FileNotFoundError(f"train set {ts.name!r}: {path} not found")
        raw = load_rows(path, ts.format, limit=ts.rows)
    if len(raw) < ts.rows:
        raise ValueError(f"train set {ts.name!r} has {len(raw)} rows, preset asks for {ts.rows}")
    return convert_rows(raw, ts.format, "messages", ts.source)


def packaged_recipe() -> dict:
    """The benchmark's CPU recipe as shipped in the package (a fresh dict on every call)."""
    resource = files(__package__) / "recipes" / RECIPE_NAME
    if not resource.is_file():
        raise FileNotFoundError(f"the packaged recipe {resource} is missing: reinstall sdd-plugin")
    return yaml.safe_load(resource.read_text(encoding="utf-8"))


def prune_keys(preset: Preset, calibration: str | None = None) -> dict[str, Any]:
    """The recipe's ``sdd_prune*`` keys for ``preset`` (``calibration``: the resolved source)."""
    return {
        "sdd_prune": True,
        "sdd_prune_num_blocks": preset.num_blocks,
        "sdd_prune_metric": preset.metric,
        "sdd_prune_calibration": calibration,
        "sdd_prune_calibration_limit": preset.calibration_samples,
        "sdd_prune_start": None,
    }


def recipe_for(
    preset: Preset,
    ts: TrainSet,
    data_file: Path,
    output_dir: Path,
    distill: bool,
    calibration: str | None = None,
) -> dict:
    """The CPU recipe with this run's data and settings; SFT and SDD differ only in ``sdd_distill``.

    ``calibration`` is the resolved calibration source (the preset's may be relative to the data root).
    """
    recipe = packaged_recipe()
    recipe.update(
        base_model=preset.model,
        **prune_keys(preset, calibration),
        sdd_distill=distill,
        sdd_distill_template=ts.template,
        sdd_distill_checker=ts.template,
        sdd_distill_max_new_tokens=preset.distill_max_new_tokens,
        sdd_distill_batch_size=preset.distill_batch_size,
        sdd_distill_do_sample=False,
        sdd_distill_retries=preset.distill_retries,
        sdd_distill_dtype=preset.dtype,
        sdd_distill_limit=None,
        datasets=[{"path": str(data_file), "type": "chat_template"}],
        dataset_prepared_path=str(output_dir / "prepared"),
        output_dir=str(output_dir / "adapter"),
        sequence_len=preset.sequence_len,
        lora_r=preset.lora_r,
        lora_alpha=preset.lora_alpha,
        micro_batch_size=preset.micro_batch_size,
        gradient_accumulation_steps=preset.gradient_accumulation_steps,
        num_epochs=preset.epochs,
        learning_rate=preset.learning_rate,
        seed=preset.seed,
    )
    if preset.max_steps:
        recipe["max_steps"] = preset.max_steps
    else:
        recipe.pop("max_steps", None)
    if preset.dtype == "bfloat16":
        recipe["bf16"] = True  # autocast on CPU (the plugin sets use_cpu)
    if preset.save_steps:
        # a checkpoint every save_steps (the last one kept); a rerun resumes from it
        recipe.update(
            save_strategy="steps",
            save_steps=preset.save_steps,
            save_total_limit=1,
            auto_resume_from_checkpoints=True,
        )
    return recipe


def _run_process_group(cmd: list[str], env: dict, stdout: Any) -> int:
    """Run ``cmd`` in its own process group and wait; if this process is interrupted (Ctrl-C or
    SIGTERM), the whole group goes down with it.

    ``axolotl train`` re-launches itself through ``accelerate``: stopping only the benchmark would
    leave a trainer running, still writing checkpoints into a stage folder that the next run
    reuses."""
    import signal
    import threading

    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    restore = None
    if threading.current_thread() is threading.main_thread():

        def on_term(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        restore = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue


def launch_axolotl(recipe: dict, folder: Path) -> Path:
    """Write ``recipe`` to ``folder/recipe.yml`` and run ``axolotl train`` on it in its own process
    group, logging to ``folder/axolotl.log``; returns the log. A failed run raises ``RuntimeError``
    with the log's tail."""
    path = folder / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # axolotl re-launches itself through `accelerate`, found on PATH: put this venv's bin first.
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    exe = shutil.which("axolotl", path=bindir) or shutil.which("axolotl")
    if exe is None:
        raise FileNotFoundError("the `axolotl` command is missing: pip install 'sdd-plugin[axolotl]'")
    logf = folder / "axolotl.log"
    with open(logf, "w", encoding="utf-8") as f:
        returncode = _run_process_group([exe, "train", str(path)], env=env, stdout=f)
    if returncode != 0:
        tail = "".join(logf.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"axolotl train failed (exit {returncode}); see {logf}:\n{tail}")
    return logf


def axolotl_train(recipe: dict, folder: Path) -> Path:
    """Run ``axolotl train`` on ``recipe`` (:func:`launch_axolotl`); return the LoRA adapter folder."""
    logf = launch_axolotl(recipe, folder)
    adapter = Path(recipe["output_dir"])
    if not is_adapter(adapter):
        raise RuntimeError(f"axolotl finished but wrote no LoRA adapter in {adapter}; see {logf}")
    return adapter

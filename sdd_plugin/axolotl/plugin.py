"""The Axolotl plugin class (imported lazily by ``sdd_plugin.axolotl``); see the package docstring.

Each hook maps the recipe onto library calls -- :func:`sdd_plugin.prune.prune`,
:func:`sdd_plugin.distill.distill_dataset`, :mod:`sdd_plugin.checkpoints`,
:func:`sdd_plugin.cache.cached_artifact` and the recipe helpers of :mod:`.recipe` -- so everything
it does is also reachable from the ``sdd`` command line and the Python API. What it decides for a
run is kept in :class:`PluginState` and written to ``<output_dir>/sdd_run.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from axolotl.utils.dict import DictDefault

from ..cache import cached_artifact, write_json_atomic
from ..checkpoints import drop_incomplete_checkpoints, pruned_base
from ..distill.kd import AXOLOTL_KD_TYPE, KD_NAME, LOGPROBS_FIELD
from ..generation.selection import release_backends
from ..prune.stage import PruneResult, load_prune_result
from . import MANIFEST
from .args import KNOWN_KEYS, RecipeKeyError, SDDArgs, parse_sdd_args
from .prebuilt import pre_distilled, pre_pruned, pruned_source
from .recipe import (
    PLUGIN_PATH,
    dataset_format,
    distilled_path,
    generation_settings_dict,
    kd_problems,
    prepared_prune,
    prune_kwargs,
    resolve_recipe,
)

#: Under "axolotl." so that axolotl's logging config shows our INFO lines next to its own.
log = logging.getLogger("axolotl.integrations.sdd_plugin")

#: cfg key the plugin writes for itself in ``register``: the unpruned model ``base_model`` was
#: pruned from. Not a recipe key (axolotl's validation drops it; see ``prepared_prune``).
PRUNED_FROM = "sdd_pruned_from"


@dataclass
class PluginState:
    """What the plugin decided for this run (recorded in ``sdd_run.json``; not recipe keys)."""

    pruned_from: str | None = None
    """The unpruned model ``base_model`` was pruned from (the default teacher)."""
    prune: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    distill: dict[str, Any] = field(default_factory=lambda: {"enabled": False, "datasets": []})


def _axolotl_validate(cfg: DictDefault) -> None:
    """Run axolotl's config validation on a copy of ``cfg`` (raises what axolotl would raise)."""
    from axolotl.cli.config import gpu_capabilities
    from axolotl.utils.config import validate_config

    capabilities, env_capabilities = gpu_capabilities()
    validate_config(DictDefault(cfg.to_dict()), capabilities=capabilities, env_capabilities=env_capabilities)


def _args_from_cfg(cfg: Any) -> SDDArgs:
    return SDDArgs.model_validate({k: cfg.get(k) for k in KNOWN_KEYS if cfg.get(k) is not None})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _adapter_dir(cfg: Any) -> str | None:
    """The adapter this axolotl command loads: ``lora_model_dir``, or ``output_dir`` when merging."""
    return cfg.get("lora_model_dir") or (cfg.get("output_dir") if cfg.get("merge_lora") else None)


class SelfDistillationPlugin(BasePlugin):
    """Layer pruning + self-data distillation (SDD, arXiv 2410.09982) inside ``axolotl train``."""

    def __init__(self) -> None:
        super().__init__()
        self.state = PluginState()

    @property
    def prune_info(self) -> dict[str, Any]:
        """What pruning did (``sdd_run.json``'s ``prune``)."""
        return self.state.prune

    @property
    def distill_info(self) -> dict[str, Any]:
        """What distillation did (``sdd_run.json``'s ``distill``)."""
        return self.state.distill

    def get_input_args(self) -> str:
        """The pydantic model whose fields become recipe keys."""
        return "sdd_plugin.axolotl.args.SDDArgs"

    # ------------------------------------------------------------------------------- register
    def register(self, cfg: dict) -> None:
        """Validate ``sdd_*`` keys, resolve names, prune, and point ``base_model`` at the result."""
        if cfg.get(PRUNED_FROM):  # prepared in this process already, e.g. registered twice
            done = load_prune_result(str(cfg.get("base_model")))
            if done is None:
                raise ValueError(
                    f"{PRUNED_FROM} is set but base_model {cfg.get('base_model')} is not a pruned "
                    f"checkpoint ({PRUNED_FROM} is written by the plugin; do not set it)"
                )
            self._set_pruned(cfg, (), done, str(cfg[PRUNED_FROM]), 0.0)
            return
        args = parse_sdd_args(cfg)
        kd_errors, _ = kd_problems(cfg, args)
        if kd_errors:
            raise RecipeKeyError("sdd-plugin recipe error: " + "; ".join(kd_errors))
        if cfg.get("auto_resume_from_checkpoints"):
            for ckpt in drop_incomplete_checkpoints(cfg.get("output_dir")):
                log.warning("sdd-plugin: removed %s, cut off mid-save (no trainer_state.json)", ckpt)
        if args.sdd_cache_dir:
            os.environ["SDD_CACHE_DIR"] = str(Path(args.sdd_cache_dir).expanduser().resolve())
        prepared = prepared_prune(cfg, args)  # validated after an earlier register (ray workers)
        if prepared is not None:
            self._set_pruned(cfg, (), prepared, str(prepared.extra["source_path"]), 0.0)
            return

        base = cfg.get("base_model")
        base_path = resolve_recipe(cfg, args)
        _axolotl_validate(cfg)  # fail on a bad recipe now, not after pruning loaded the weights
        _check_teacher_here(cfg, args)
        done = pre_pruned(base_path)
        if done is not None:  # `sdd prune` (or an earlier job) pruned it: every rank only reads it
            self._set_pruned(cfg, (), done, pruned_source(done) or base_path, 0.0)
            self.state.prune["pre_pruned"] = True
            log.info(
                "sdd-plugin: base_model %s is pruned already (blocks %s removed from %s): training it as it is",
                base_path,
                done.removed_blocks,
                pruned_source(done),
            )
            return
        if not args.sdd_prune:
            self.state.prune = {"enabled": False, "model": base_path}
            return

        adapter_dir = _adapter_dir(cfg)
        trained = pruned_base(adapter_dir) if adapter_dir else None
        if trained is not None:
            # merge-lora / inference / resuming an adapter: use the pruned model it was trained on,
            # even if today's settings or code would prune differently.
            source = trained.extra.get("source_path", base_path)
            if Path(source).resolve() != Path(base_path).resolve():
                log.warning(
                    "sdd-plugin: the adapter in %s was trained on a model pruned from %s, not from base_model %s",
                    adapter_dir,
                    source,
                    base_path,
                )
            self._set_pruned(cfg, (base, base_path), trained, base_path, 0.0)
            self.state.prune["from_adapter"] = str(adapter_dir)
            log.info(
                "sdd-plugin: using the pruned model the adapter in %s was trained on: %s",
                adapter_dir,
                trained.out_dir,
            )
            return

        from ..prune.stage import prune

        t0 = time.time()
        result = prune(base_path, **prune_kwargs(args))
        self._set_pruned(cfg, (base, base_path), result, base_path, time.time() - t0)
        log.info(
            "sdd-plugin: %s pruned model %s (removed blocks %s, %d -> %d blocks)",
            "reusing" if result.reused else "built",
            result.out_dir,
            result.removed_blocks,
            result.num_layers_before,
            result.num_layers_after,
        )

    def _set_pruned(
        self, cfg: Any, unpruned_names: tuple, result: PruneResult, source: str, seconds: float
    ) -> None:
        """Point ``base_model`` (and the config keys that named the unpruned model) at ``result``."""
        pruned = str(result.out_dir)
        for key in ("base_model_config", "tokenizer_config"):
            if unpruned_names and cfg.get(key) in unpruned_names:
                cfg[key] = pruned
        cfg["base_model"] = pruned
        cfg[PRUNED_FROM] = source
        self.state.pruned_from = source
        self.state.prune = {
            "enabled": True,
            "reused": bool(result.reused),
            "seconds": round(seconds, 2),
            "source": source,
            "model": pruned,
            "removed_blocks": list(result.removed_blocks),
            "num_layers_before": result.num_layers_before,
            "num_layers_after": result.num_layers_after,
            "metric": result.metric,
        }

    # -------------------------------------------------------------------------- load_datasets
    def load_datasets(self, cfg: DictDefault, preprocess: bool = False):
        """Rewrite every ``datasets:`` entry with the teacher, then let axolotl load them (returns None).

        An entry that is a set ``sdd distill`` wrote already is loaded as it is (never rewritten
        twice), with or without ``sdd_distill``."""
        args = _args_from_cfg(cfg)
        _cpu_ranks_device_map(cfg)
        if args.sdd_distill:
            self._distill(cfg, args)
        else:
            ready = [_pre_distilled_entry(e, i, args) for i, e in enumerate(cfg.get("datasets") or [])]
            self.state.distill = {
                "enabled": False,
                "datasets": [info for _, info in ready if info is not None],
            }
            cfg["datasets"] = [entry for entry, _ in ready]
        self._write_manifest(cfg, stage="datasets")
        return None

    def _distill(self, cfg: DictDefault, args: SDDArgs) -> None:
        teacher = cfg.get("sdd_teacher") or self.state.pruned_from or cfg.get("base_model")
        entries = list(cfg.get("datasets") or [])
        ready = [_pre_distilled_entry(entry, i, args) for i, entry in enumerate(entries)]
        # all errors before any work
        formats = [
            None if r[1] else dataset_format(entry, i) for i, (entry, r) in enumerate(zip(entries, ready))
        ]
        if args.sdd_kd and any(fmt is not None for fmt in formats):
            _check_kd_tokenizer(cfg, teacher)
        ranks = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if ranks > 1 and any(fmt is not None for fmt in formats):
            log.warning(
                "sdd-plugin: distilling inside a %d-process launch: one rank distils, the others wait for it. "
                "Distil once before the launch instead (`axolotl preprocess <recipe>` or `sdd distill`; "
                "README: multi-GPU and multi-node)",
                ranks,
            )
        new_entries, infos = [], []
        for i, (entry, fmt) in enumerate(zip(entries, formats)):
            if fmt is None:  # distilled before this job (`sdd distill`): read as it is
                new_entries.append(ready[i][0])
                infos.append(ready[i][1])
                continue
            out = distilled_path(entry, teacher, fmt, args)
            t0 = time.time()
            report, reused = _distill_entry(entry, fmt, out, teacher, args)
            log.info(
                "sdd-plugin: datasets[%d] %s -> %s (%s; %s of %s rewrites accepted, the rest fall back)",
                i,
                entry.get("path"),
                out,
                "reused" if reused else "distilled",
                report.get("accepted"),
                report.get("rows"),
            )
            data = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
            data.update(
                path=str(out), ds_type="json", data_files=None, name=None, revision=None, split="train"
            )
            if args.sdd_kd:  # the same rows with the teacher's log-probs, read by axolotl's KD type
                data.update(
                    path=str(out.parent / KD_NAME),
                    type=AXOLOTL_KD_TYPE,
                    field_messages="messages",
                    logprobs_field=LOGPROBS_FIELD,
                )
            new_entries.append(DictDefault(data))
            infos.append(
                {
                    "index": i,
                    "source": str(entry.get("path")),
                    "type": entry.get("type"),
                    "format": fmt,
                    "path": str(out),
                    "reused": reused,
                    "seconds": round(time.time() - t0, 2),
                    "report": _summary(report),
                }
            )
        cfg["datasets"] = new_entries
        self.state.distill = {"enabled": True, "teacher": teacher, "datasets": infos}
        if not all(info.get("reused") for info in infos):
            release_backends()  # the teacher (a vLLM engine: its GPU memory) is not needed for training

    # ------------------------------------------------------------------------------ checks
    def post_model_build(self, cfg: DictDefault, model) -> None:
        """Fail loudly if the model axolotl built is not the pruned one."""
        if not self.prune_info.get("enabled"):
            return
        from ..prune.surgery import decoder_layers

        got = len(decoder_layers(model))
        want = self.prune_info["num_layers_after"]
        if got != want:
            raise RuntimeError(
                f"sdd-plugin: axolotl built a model with {got} blocks, expected the pruned {want}"
            )
        log.info(
            "sdd-plugin: training the pruned model (%d blocks, removed %s)",
            got,
            self.prune_info["removed_blocks"],
        )

    def get_training_args(self, cfg: DictDefault) -> dict[str, Any] | None:
        """``use_cpu`` for a bf16 recipe on a machine without an accelerator.

        transformers refuses ``bf16`` on CPU unless ``use_cpu`` is set, and axolotl has no key for
        it; CPUs with AVX512-BF16/AMX run bf16 matmuls natively, so the CPU recipes can ask for
        ``bf16: true`` (elsewhere bf16 is emulated and much slower: a warning says so)."""
        import torch

        if not (cfg.get("bf16") is True or cfg.get("bfloat16")):
            return None
        has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
        if torch.cuda.is_available() or has_xpu or torch.backends.mps.is_available():
            return None
        from ..models import warn_if_slow_dtype

        warn_if_slow_dtype("bfloat16", "training (bf16: true)")
        log.info("sdd-plugin: bf16 on a CPU-only machine -> use_cpu=True (autocast on CPU)")
        return {"use_cpu": True}

    def post_trainer_create(self, cfg: DictDefault, trainer) -> None:
        """With ``sdd_kd``: fail unless axolotl's KD trainer is the one training (a KD plugin that
        did not load would leave the plain trainer, which ignores the log-probs)."""
        if not _args_from_cfg(cfg).sdd_kd:
            return
        from axolotl.integrations.kd.trainer import AxolotlKDTrainer

        if not isinstance(trainer, AxolotlKDTrainer):
            raise RuntimeError(
                f"sdd-plugin: sdd_kd is on but axolotl built {type(trainer).__name__}, not its KD trainer "
                "(is axolotl.integrations.kd.KDPlugin listed and kd_trainer: true?)"
            )
        log.info(
            "sdd-plugin: SDD + KD: %s trains on the teacher's top-%d log-probs (kd_alpha %s, kd_ce_alpha %s, "
            "kd_temperature %s)",
            type(trainer).__name__,
            cfg.get("sdd_kd_top_k") or 20,
            cfg.get("kd_alpha"),
            cfg.get("kd_ce_alpha"),
            cfg.get("kd_temperature"),
        )

    def post_train_unload(self, cfg: DictDefault) -> None:
        """Record the finished run in ``<output_dir>/sdd_run.json``."""
        self._write_manifest(cfg, stage="trained")

    # --------------------------------------------------------------------------- manifest
    def _write_manifest(self, cfg: DictDefault, stage: str) -> None:
        out_dir = cfg.get("output_dir")
        if not out_dir:
            return
        path = Path(out_dir) / MANIFEST
        old = _read_json(path)
        runs = int(old.get("runs", 0)) + (1 if stage == "datasets" else 0)
        manifest = {
            "plugin": PLUGIN_PATH,
            "stage": stage,
            "runs": runs,
            "base_model": cfg.get("base_model"),
            "teacher": cfg.get("sdd_teacher"),
            "prune": self.state.prune,
            "distill": self.state.distill,
            "settings": {k: cfg.get(k) for k in sorted(KNOWN_KEYS)},
            "history": (old.get("history") or [])[-20:]
            + [
                {
                    "stage": stage,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "prune_reused": self.state.prune.get("reused"),
                    "distill_reused": [d["reused"] for d in self.state.distill.get("datasets", [])],
                }
            ],
        }
        write_json_atomic(path, manifest)


def _distill_entry(
    entry: Any, fmt: str, out: Path, teacher: str, args: SDDArgs
) -> tuple[dict[str, Any], bool]:
    """Distil one dataset entry into ``out`` unless done already; ``(report, reused)``.

    ``distill_dataset`` resumes from its own row cache and writes its report last, so the folder
    is built in place; ranks that ask at the same time wait for the first one and reuse its work."""
    from ..distill.stage import REPORT_NAME, distill_dataset
    from ..interfaces import GenerationSettings

    reports: list[dict[str, Any]] = []

    def build(folder: Path) -> None:
        result = distill_dataset(
            teacher,
            str(entry.get("path")),
            fmt,
            folder / out.name,
            template=args.sdd_distill_template,
            checker=args.sdd_distill_checker,
            limit=args.sdd_distill_limit,
            split=entry.get("split") or "train",
            settings=GenerationSettings(**generation_settings_dict(args)),
            backend=args.sdd_distill_backend,
            measure_nll=args.sdd_distill_measure_nll,
            retries=args.sdd_distill_retries,
            ray=args.sdd_distill_ray,
            ray_workers=args.sdd_distill_ray_workers,
            kd_top_k=args.sdd_kd_top_k if args.sdd_kd else 0,
        )
        reports.append(result.report)

    markers = (REPORT_NAME, out.name, *([KD_NAME] if args.sdd_kd else []))
    artifact = cached_artifact(out.parent, build, marker=markers, in_place=True)
    return (reports[0] if reports else _read_json(out.parent / REPORT_NAME)), artifact.reused


def _cpu_ranks_device_map(cfg: Any) -> None:
    """Several processes on a CPU-only machine (``accelerate launch --multi_gpu`` with
    ``ACCELERATE_USE_CPU=true``: gloo): axolotl 0.19 maps each rank's model to accelerator index
    ``LOCAL_RANK``, which does not exist there; map it to the CPU instead. (``load_datasets`` is
    the last hook before the model loads that sees the normalised cfg.)"""
    import torch

    device_map = cfg.get("device_map")
    multi = int(cfg.get("world_size") or 1) > 1
    if multi and str(cfg.get("device")) == "cpu" and not torch.cuda.is_available():
        if isinstance(device_map, dict) and all(isinstance(v, int) for v in device_map.values()):
            cfg["device_map"] = {"": "cpu"}
            log.info(
                "sdd-plugin: %d processes on a CPU-only machine: device_map -> cpu", cfg.get("world_size")
            )


def _pre_distilled_entry(entry: Any, index: int, args: SDDArgs) -> tuple[Any, dict[str, Any] | None]:
    """``(entry, info)``: for a set ``sdd distill`` wrote, the entry pointed at its rows (with
    ``sdd_kd``: at its KD set, read by axolotl's KD type) and what ``sdd_run.json`` records; for any
    other entry, ``(entry, None)``."""
    ready = pre_distilled(entry.get("path"))
    if ready is None:
        return entry, None
    data = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
    data.update(path=str(ready.rows), ds_type="json", data_files=None, name=None, revision=None)
    if args.sdd_kd:
        if ready.kd is None:
            raise ValueError(
                f"datasets[{index}]: {entry.get('path')} was distilled without the teacher's log-probs; "
                "sdd_kd needs its kd.jsonl (sdd distill --kd-top-k 20)"
            )
        data.update(
            path=str(ready.kd), type=AXOLOTL_KD_TYPE, field_messages="messages", logprobs_field=LOGPROBS_FIELD
        )
    info = {
        "index": index,
        "source": str(entry.get("path")),
        "type": entry.get("type"),
        "path": data["path"],
        "reused": True,
        "pre_distilled": True,
        "report": _summary(ready.report),
    }
    log.info(
        "sdd-plugin: datasets[%d] %s was distilled before this job (teacher %s): read as it is",
        index,
        data["path"],
        ready.report.get("teacher"),
    )
    return DictDefault(data), info


def _check_teacher_here(cfg: Any, args: SDDArgs) -> None:
    """When a dataset is still to be distilled, the teacher must be on this machine: a
    ``base_model`` pruned elsewhere names an unpruned source that may not be (fail before work)."""
    if not args.sdd_distill or args.sdd_teacher:
        return
    done = pre_pruned(cfg.get("base_model"))
    teacher = str(cfg.get("sdd_teacher") or "")
    if done is None or not Path(teacher).is_absolute() or Path(teacher).exists():
        return
    todo = [i for i, e in enumerate(cfg.get("datasets") or []) if pre_distilled(e.get("path")) is None]
    if todo:
        raise ValueError(
            f"sdd_teacher: base_model {cfg.get('base_model')} was pruned from {teacher}, which is not on "
            f"this machine, and datasets {todo} are still to be distilled; set sdd_teacher to the unpruned "
            "model, or point those datasets at sets `sdd distill` wrote (README: multi-GPU and multi-node)"
        )


def _check_kd_tokenizer(cfg: Any, teacher: str) -> None:
    """KD targets are token ids of the teacher's vocabulary: the student must share it."""
    from ..models import load_tokenizer

    student = cfg.get("tokenizer_config") or cfg.get("base_model")
    if Path(str(teacher)).resolve() == Path(str(student)).resolve():
        return
    if load_tokenizer(teacher).get_vocab() != load_tokenizer(student).get_vocab():
        raise ValueError(
            f"sdd_kd: the teacher {teacher} and the student {student} have different tokenizers; "
            "logit distillation needs the same vocabulary (leave sdd_teacher unset: the unpruned base_model)"
        )


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a distillation report."""
    keys = ("rows", "accepted", "acceptance_rate", "fallbacks", "generated_rows", "cached_rows")
    keys += ("tokens_per_s", "nll_original", "nll_distilled", "template", "checker", "seconds", "kd")
    return {k: report.get(k) for k in keys if k in report}

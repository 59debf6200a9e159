"""The Axolotl plugin class (imported lazily by ``sdd_plugin.axolotl``); see the package docstring."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from axolotl.utils.dict import DictDefault

from . import MANIFEST
from .args import KNOWN_KEYS, PREFIX, SDDArgs, parse_sdd_args
from .recipe import (
    PLUGIN_PATH,
    check_prune_range,
    dataset_format,
    distilled_path,
    drop_incomplete_checkpoints,
    file_lock,
    generation_settings_dict,
    is_data_uri,
    num_layers,
    resolve_data_uri,
)

#: Under "axolotl." so that axolotl's logging config shows our INFO lines next to its own.
log = logging.getLogger("axolotl.integrations.sdd_plugin")


def _axolotl_validate(cfg: DictDefault) -> None:
    """Run axolotl's config validation on a copy of ``cfg`` (raises what axolotl would raise)."""
    from axolotl.cli.config import gpu_capabilities
    from axolotl.utils.config import validate_config

    capabilities, env_capabilities = gpu_capabilities()
    validate_config(DictDefault(cfg.to_dict()), capabilities=capabilities, env_capabilities=env_capabilities)


def _args_from_cfg(cfg: Any) -> SDDArgs:
    return SDDArgs.model_validate({k: cfg.get(k) for k in KNOWN_KEYS if cfg.get(k) is not None})


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class SelfDistillationPlugin(BasePlugin):
    """Layer pruning + self-data distillation (SDD, arXiv 2410.09982) inside ``axolotl train``."""

    def __init__(self) -> None:
        super().__init__()
        self.prune_info: dict[str, Any] = {"enabled": False}
        self.distill_info: dict[str, Any] = {"enabled": False, "datasets": []}

    def get_input_args(self) -> str:
        """The pydantic model whose fields become recipe keys."""
        return "sdd_plugin.axolotl.args.SDDArgs"

    # ------------------------------------------------------------------------------- register
    def register(self, cfg: dict) -> None:
        """Validate ``sdd_*`` keys, resolve names, prune, and point ``base_model`` at the result."""
        if cfg.get("sdd_pruned_from"):  # this cfg was prepared already (e.g. re-registered on a ray worker)
            meta = _read_json(Path(str(cfg.get("base_model"))) / "sdd_prune.json")
            self._set_pruned(cfg, None, cfg["sdd_pruned_from"], str(cfg["base_model"]), meta, True, 0.0)
            return
        args = parse_sdd_args(cfg)
        if cfg.get("auto_resume_from_checkpoints"):
            for ckpt in drop_incomplete_checkpoints(cfg.get("output_dir")):
                log.warning("sdd-plugin: removed %s, cut off mid-save (no trainer_state.json)", ckpt)
        if args.sdd_cache_dir:
            os.environ["SDD_CACHE_DIR"] = str(Path(args.sdd_cache_dir).expanduser().resolve())
        base = cfg.get("base_model")
        if not base:
            raise ValueError("base_model: missing (sdd-plugin needs the model to prune and distil from)")

        from ..models import EMBEDDED_MODELS, resolve_model

        base_path: str = str(base)
        if str(base) in EMBEDDED_MODELS or args.sdd_prune:
            base_path = str(resolve_model(base))
        for key in ("base_model_config", "tokenizer_config"):
            if cfg.get(key) is not None and str(cfg.get(key)) in EMBEDDED_MODELS:
                cfg[key] = str(resolve_model(cfg.get(key)))
        teacher = args.sdd_teacher or base_path
        if str(teacher) in EMBEDDED_MODELS:
            teacher = str(resolve_model(teacher))
        if args.sdd_prune:
            check_prune_range(args, num_layers(base_path))

        for list_key in ("datasets", "test_datasets"):
            for entry in cfg.get(list_key) or []:
                if isinstance(entry, dict) and is_data_uri(entry.get("path")):
                    entry["path"] = str(resolve_data_uri(entry["path"], entry.get("type")))

        cfg["base_model"] = base_path
        cfg["sdd_teacher"] = str(teacher)
        # Fail on a bad recipe now, not after pruning loaded the weights.
        _axolotl_validate(cfg)

        if not args.sdd_prune:
            self.prune_info = {"enabled": False, "model": base_path}
            return

        trained = _adapter_base(cfg)
        if trained is not None:
            # merge-lora / inference / resuming an adapter: use the pruned model it was trained on,
            # even if today's settings or code would prune differently.
            adapter_dir, folder, meta = trained
            if Path(meta.get("source_path", base_path)).resolve() != Path(base_path).resolve():
                log.warning(
                    "sdd-plugin: the adapter in %s was trained on a model pruned from %s, not from base_model %s",
                    adapter_dir,
                    meta.get("source_path"),
                    base_path,
                )
            self._set_pruned(cfg, base, base_path, str(folder), meta, reused=True, seconds=0.0)
            self.prune_info["from_adapter"] = str(adapter_dir)
            log.info(
                "sdd-plugin: using the pruned model the adapter in %s was trained on: %s", adapter_dir, folder
            )
            return

        from ..prune import prune

        kwargs: dict[str, Any] = {}
        if args.sdd_prune_calibration_limit:
            kwargs["num_samples"] = args.sdd_prune_calibration_limit
        t0 = time.time()
        with file_lock(f"prune-{Path(base_path).name}"):
            result = prune(
                base_path,
                num_blocks=args.sdd_prune_num_blocks,
                metric=args.sdd_prune_metric,
                calibration=args.sdd_prune_calibration,
                start=args.sdd_prune_start,
                **kwargs,
            )
        pruned = str(result.out_dir)
        meta = {
            "source_path": base_path,
            "removed_blocks": list(result.removed_blocks),
            "num_layers_before": result.num_layers_before,
            "num_layers_after": result.num_layers_after,
            "metric": result.metric,
        }
        self._set_pruned(
            cfg, base, base_path, pruned, meta, reused=bool(result.reused), seconds=time.time() - t0
        )
        log.info(
            "sdd-plugin: %s pruned model %s (removed blocks %s, %d -> %d blocks)",
            "reusing" if result.reused else "built",
            pruned,
            result.removed_blocks,
            result.num_layers_before,
            result.num_layers_after,
        )

    def _set_pruned(
        self, cfg: Any, base: Any, base_path: str, pruned: str, meta: dict, reused: bool, seconds: float
    ) -> None:
        """Point ``base_model`` (and configs that named the unpruned model) at ``pruned``."""
        for key in ("base_model_config", "tokenizer_config"):
            if cfg.get(key) in (base, base_path):
                cfg[key] = pruned
        cfg["base_model"] = pruned
        cfg["sdd_pruned_from"] = base_path
        self.prune_info = {
            "enabled": True,
            "reused": reused,
            "seconds": round(seconds, 2),
            "source": base_path,
            "model": pruned,
            "removed_blocks": list(meta.get("removed_blocks", [])),
            "num_layers_before": meta.get("num_layers_before"),
            "num_layers_after": meta.get("num_layers_after"),
            "metric": meta.get("metric"),
        }

    # -------------------------------------------------------------------------- load_datasets
    def load_datasets(self, cfg: DictDefault, preprocess: bool = False):
        """Rewrite every ``datasets:`` entry with the teacher, then let axolotl load them (returns None)."""
        args = _args_from_cfg(cfg)
        if args.sdd_distill:
            self._distill(cfg, args)
        else:
            self.distill_info = {"enabled": False, "datasets": []}
        self._write_manifest(cfg, stage="datasets")
        return None

    def _distill(self, cfg: DictDefault, args: SDDArgs) -> None:
        from ..distill.stage import distill_dataset
        from ..interfaces import GenerationSettings

        teacher = cfg.get("sdd_teacher") or cfg.get("sdd_pruned_from") or cfg.get("base_model")
        settings = GenerationSettings(**generation_settings_dict(args))
        entries = list(cfg.get("datasets") or [])
        formats = [dataset_format(entry, i) for i, entry in enumerate(entries)]  # all errors before any work
        new_entries, infos = [], []
        for i, (entry, fmt) in enumerate(zip(entries, formats)):
            out = distilled_path(entry, teacher, fmt, args)
            done = out.parent / "distill_report.json"  # written last by distill_dataset
            t0 = time.time()
            with file_lock(out.parent.name):
                if out.is_file() and done.is_file():
                    report = _read_json(done)
                    reused = True
                else:
                    result = distill_dataset(
                        teacher,
                        str(entry.get("path")),
                        fmt,
                        out,
                        template=args.sdd_distill_template,
                        checker=args.sdd_distill_checker,
                        limit=args.sdd_distill_limit,
                        split=entry.get("split") or "train",
                        settings=settings,
                        backend=args.sdd_distill_backend,
                        measure_nll=args.sdd_distill_measure_nll,
                        retries=args.sdd_distill_retries,
                    )
                    report = result.report
                    reused = False
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
        self.distill_info = {"enabled": True, "teacher": teacher, "datasets": infos}

    # ------------------------------------------------------------------------------ checks
    def post_model_build(self, cfg: DictDefault, model) -> None:
        """Fail loudly if the model axolotl built is not the pruned one."""
        if not self.prune_info.get("enabled"):
            return
        from ..prune import decoder_layers

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
        it; CPUs with AVX512-BF16/AMX run bf16 matmuls 2-3x faster than fp32, so the CPU recipes
        can ask for ``bf16: true`` (elsewhere bf16 is emulated and much slower: a warning says so)."""
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

    def post_train_unload(self, cfg: DictDefault) -> None:
        """Record the finished run in ``<output_dir>/sdd_run.json``."""
        self._write_manifest(cfg, stage="trained")

    # --------------------------------------------------------------------------- manifest
    def _write_manifest(self, cfg: DictDefault, stage: str) -> None:
        from ..cache import write_json_atomic

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
            "prune": self.prune_info,
            "distill": self.distill_info,
            "settings": {k: cfg.get(k) for k in sorted(KNOWN_KEYS) if k.startswith(PREFIX)},
            "history": (old.get("history") or [])[-20:]
            + [
                {
                    "stage": stage,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "prune_reused": self.prune_info.get("reused"),
                    "distill_reused": [d["reused"] for d in self.distill_info.get("datasets", [])],
                }
            ],
        }
        write_json_atomic(path, manifest)


def _adapter_base(cfg: Any) -> tuple[Path, Path, dict[str, Any]] | None:
    """The pruned checkpoint an existing adapter of this recipe was trained on, if any.

    The adapter is ``lora_model_dir`` when set, else ``output_dir`` when merging (``merge_lora``).
    Returns ``(adapter_dir, pruned_folder, its sdd_prune.json)`` or None.
    """
    adapter_dir = cfg.get("lora_model_dir") or (cfg.get("output_dir") if cfg.get("merge_lora") else None)
    if not adapter_dir:
        return None
    base = _read_json(Path(adapter_dir) / "adapter_config.json").get("base_model_name_or_path")
    if not base or not (Path(base) / "sdd_prune.json").is_file():
        return None
    return Path(adapter_dir), Path(base), _read_json(Path(base) / "sdd_prune.json")


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a distillation report."""
    keys = ("rows", "accepted", "acceptance_rate", "fallbacks", "generated_rows", "cached_rows")
    keys += ("tokens_per_s", "nll_original", "nll_distilled", "template", "checker", "seconds")
    return {k: report.get(k) for k in keys if k in report}

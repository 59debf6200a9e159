"""Recipe helpers shared by the Axolotl plugin and ``sdd check`` (no axolotl import here).

They map recipe keys onto library calls; the work itself is done by the library:

- :func:`load_recipe` reads a recipe YAML;
- :func:`resolve_recipe` resolves embedded model names and ``sdd://`` dataset paths in place;
- :func:`resolve_data_uri` turns ``sdd://wordproblems?n=64`` / ``sdd://convert?...`` dataset paths
  into a cached jsonl in the layout the entry's axolotl ``type`` reads
  (:mod:`sdd_plugin.distill.convert`; ``sdd data`` on the command line);
- :func:`prune_kwargs`, :func:`generation_settings_dict` -- the ``sdd_*`` keys as library arguments;
- :func:`prepared_prune` -- whether a cfg was prepared (pruned) by the plugin already;
- :func:`dataset_format` maps an axolotl dataset entry to a :mod:`sdd_plugin.distill.formats` format;
- :func:`distilled_path` names the content-hashed file a dataset entry is distilled into;
- :func:`kd_problems` checks the SDD + KD combination (``sdd_kd`` with axolotl's KD plugin);
- :func:`plan` says what the plugin would do with a recipe (for ``sdd check``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlparse

from ..cache import cache_dir, fingerprint, stable_hash
from ..data.sources import looks_local
from ..generation.backend_args import output_settings
from ..generation.selection import resolve_backend_name
from .args import SDDArgs, parse_sdd_args
from .prebuilt import pre_distilled, pre_pruned, pruned_source

if TYPE_CHECKING:
    from ..prune.stage import PruneResult

#: The dotted path a recipe lists under ``plugins:``.
PLUGIN_PATH = "sdd_plugin.axolotl.SelfDistillationPlugin"
#: Scheme of embedded-data dataset paths.
DATA_SCHEME = "sdd://"
#: Embedded data sets reachable through ``sdd://NAME?...``.
DATA_SETS = ("wordproblems", "convert")
#: Axolotl chat-template options that change which field holds the turns; not supported here.
_CHAT_LAYOUT_KEYS = (
    "field_messages",
    "message_property_mappings",
    "message_field_role",
    "message_field_content",
)


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe YAML into a dict (FileNotFoundError / ValueError naming the file)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    return raw


def is_data_uri(path: Any) -> bool:
    """True for ``sdd://...`` dataset paths."""
    return isinstance(path, str) and path.startswith(DATA_SCHEME)


def _int_param(uri: str, params: dict[str, str], key: str, default: int | None) -> int | None:
    if key not in params:
        return default
    try:
        value = int(params[key])
    except ValueError as exc:
        raise ValueError(f"dataset path {uri!r}: {key} must be an integer, got {params[key]!r}") from exc
    if key == "n" and value <= 0:
        raise ValueError(f"dataset path {uri!r}: n must be positive")
    return value


def resolve_data_uri(uri: str, axolotl_type: Any = None) -> Path:
    """Write the data named by an ``sdd://`` dataset path to a jsonl in the cache; return its path.

    - ``sdd://wordproblems?n=64&seed=0&split=train``: ``n`` generated GSM8K-style word problems
      (:func:`sdd_plugin.data.synthetic.word_problems`), the embedded default data;
    - ``sdd://convert?source=FILE_OR_HUB_ID&format=gsm8k|dolly|alpaca|...[&name=CONFIG][&split=train][&n=N]``:
      rows of any :mod:`sdd_plugin.distill.formats` format (e.g. GSM8K ``question``/``answer`` or Dolly),
      converted so that axolotl's ``chat_template``/``alpaca`` types can read them.

    The output ``layout`` (parameter, or else from the axolotl ``type``): ``chat_template`` ->
    ``messages`` (user turn, assistant turn), ``alpaca*`` -> instruction/input/output, otherwise
    the GSM8K schema (wordproblems only); see :mod:`sdd_plugin.distill.convert`. The file name
    hashes the inputs, so it is stable. On the command line: ``sdd data wordproblems`` and
    ``sdd data convert``.
    """
    from ..distill.convert import convert_dataset, convert_rows, layout_for_axolotl_type
    from ..distill.formats import get_format

    parsed = urlparse(uri)
    name = parsed.netloc or parsed.path.lstrip("/")
    if name not in DATA_SETS:
        raise ValueError(
            f"dataset path {uri!r}: unknown sdd:// data set {name!r}; known: {', '.join(DATA_SETS)}"
        )
    params = dict(parse_qsl(parsed.query, keep_blank_values=True))
    allowed = {
        "wordproblems": {"n", "seed", "split", "layout"},
        "convert": {"source", "format", "name", "split", "n", "layout"},
    }[name]
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(
            f"dataset path {uri!r}: unknown parameter(s) {sorted(unknown)}; use {', '.join(sorted(allowed))}"
        )
    n = _int_param(uri, params, "n", 64 if name == "wordproblems" else None)
    split = params.get("split", "train")
    layout = params.get("layout") or layout_for_axolotl_type(axolotl_type) or "gsm8k"
    layouts = ("messages", "alpaca", "gsm8k") if name == "wordproblems" else ("messages", "alpaca")
    if layout not in layouts:
        raise ValueError(f"dataset path {uri!r}: layout must be one of {', '.join(layouts)}, got {layout!r}")

    if name == "wordproblems":
        seed = _int_param(uri, params, "seed", 0)
        if split not in ("train", "test"):
            raise ValueError(f"dataset path {uri!r}: split must be train or test, got {split!r}")
        key: dict[str, Any] = {
            "set": name,
            "n": n,
            "seed": seed,
            "split": split,
            "layout": layout,
            "version": 1,
        }
        stem = f"{name}-{split}-n{n}-s{seed}-{layout}"
    else:
        source, fmt = params.get("source"), params.get("format")
        if not source or not fmt:
            raise ValueError(f"dataset path {uri!r}: convert needs source=... and format=...")
        fmt = get_format(fmt).name  # ValueError listing the known formats
        ident = dataset_identity({"path": source, "name": params.get("name"), "split": split})
        key = {"set": name, "data": ident, "format": fmt, "n": n, "layout": layout, "version": 2}
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(source).name.split('.')[0])[:40]}-{fmt}-{layout}"
    out = cache_dir() / "axolotl-data" / f"{stem}-{stable_hash(key, 10)}.jsonl"
    if out.is_file():
        return out
    if name == "convert":
        return convert_dataset(
            source, fmt, out, layout=layout, split=split, limit=n, config=params.get("name") or None
        )
    from ..data.synthetic import word_problems, write_jsonl

    rows = word_problems(n, seed=seed, split=split)
    return write_jsonl(rows if layout == "gsm8k" else convert_rows(rows, "gsm8k", layout, uri), out)


def dataset_format(entry: Mapping[str, Any], index: int) -> str:
    """The :mod:`sdd_plugin.distill.formats` format of an axolotl dataset entry (ValueError naming it)."""
    from ..distill.formats import format_for_axolotl_type

    where = f"datasets[{index}] ({entry.get('path')!r})"
    try:
        fmt = format_for_axolotl_type(entry.get("type"))
    except ValueError as exc:
        raise ValueError(
            f"{where}: {exc}; set sdd_distill: false to train on it without distillation"
        ) from exc
    extra = [k for k in ("name", "data_files") if entry.get(k)]
    if extra:
        raise ValueError(
            f"{where}: {', '.join(extra)} is not supported with self-distillation; load it through "
            f"path: sdd://convert?source=<hub id>&name=<config>&format=<format> instead"
        )
    if fmt == "messages":
        defaults = (None, {}, "messages", "role", "content")
        custom = [k for k in _CHAT_LAYOUT_KEYS if entry.get(k) not in defaults]
        mapping = entry.get("message_property_mappings") or {}
        if isinstance(mapping, Mapping) and all(
            k == v for k, v in mapping.items() if k in ("role", "content")
        ):
            custom = [k for k in custom if k != "message_property_mappings"]  # axolotl fills in the identity
        if custom:
            raise ValueError(
                f"{where}: self-distillation reads chat rows from 'messages' with role/content; "
                f"{', '.join(custom)} is not supported (convert the data or set sdd_distill: false)"
            )
    return fmt


def dataset_identity(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a dataset entry's content: its keys, plus the :func:`~sdd_plugin.cache.fingerprint`
    of a local file or folder (a hub id is identified by its id, name, split and revision)."""
    path = str(entry.get("path"))
    ident: dict[str, Any] = {
        k: entry.get(k) for k in ("path", "name", "split", "data_files", "revision", "type") if entry.get(k)
    }
    local = Path(path).expanduser()
    if local.exists():
        ident["content"] = fingerprint(local)
    return ident


def distilled_path(
    entry: Mapping[str, Any], teacher: str, fmt: str, args: SDDArgs, root: Path | None = None
) -> Path:
    """Content-hashed ``.../<name>-<format>-<hash>/distilled.jsonl`` for the distilled copy of
    ``entry`` (axolotl's prepared-dataset cache is keyed on the dataset path, so a new teacher,
    template, setting or data content must give a new path). Reports are written beside it."""
    key = {
        "version": 2,
        "data": dataset_identity(entry),
        "format": fmt,
        "teacher": fingerprint(teacher),
        "template": args.sdd_distill_template,
        "checker": args.sdd_distill_checker,
        "backend": resolve_backend_name(args.sdd_distill_backend),
        "settings": output_settings(generation_settings_dict(args)),
        "limit": args.sdd_distill_limit,
        **({"retries": args.sdd_distill_retries} if args.sdd_distill_retries else {}),
        **({"kd_top_k": args.sdd_kd_top_k} if args.sdd_kd else {}),
    }
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(entry.get("path"))).name.split(".")[0])[:40] or "data"
    folder = (root or cache_dir() / "axolotl-distilled") / f"{stem}-{fmt}-{stable_hash(key)}"
    return folder / "distilled.jsonl"


def generation_settings_dict(args: SDDArgs) -> dict[str, Any]:
    """The teacher generation settings of a recipe (keys of :class:`GenerationSettings`)."""
    extra = {"dtype": args.sdd_distill_dtype} if args.sdd_distill_dtype != "float32" else {}
    extra.update(args.sdd_distill_backend_args or {})
    return {
        "max_new_tokens": args.sdd_distill_max_new_tokens,
        "batch_size": args.sdd_distill_batch_size,
        "do_sample": args.sdd_distill_do_sample,
        "temperature": args.sdd_distill_temperature,
        "top_p": args.sdd_distill_top_p,
        "seed": args.sdd_distill_seed,
        # only a non-default dtype and backend options enter the dict (and so the cache keys):
        # the keys of recipes without them stay valid
        **({"extra": extra} if extra else {}),
    }


def _kd_keys() -> frozenset[str] | None:
    """The recipe keys of axolotl's KD plugin (None when axolotl is not importable here)."""
    try:
        from axolotl.integrations.kd.args import KDArgs
    except Exception:
        return None
    return frozenset(KDArgs.model_fields)


def kd_problems(raw: Mapping[str, Any], args: SDDArgs) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a recipe's SDD + KD settings.

    ``sdd_kd`` needs distillation, axolotl's KD plugin listed with ``kd_trainer: true`` and the
    loss weights its trainer has no default for (``kd_alpha``, ``kd_ce_alpha`` in [0, 1],
    ``kd_temperature`` > 0), and chat-template datasets tokenized with the tokenizer's own
    template (the log-probs are aligned to its tokens). ``kd_trainer`` without ``sdd_kd`` has no
    log-probs to train on. Misspelled ``kd_*`` keys (which axolotl would drop) are named."""
    from ..distill.kd import AXOLOTL_KD_PLUGIN, AXOLOTL_KD_TYPE

    problems: list[str] = []
    warnings: list[str] = []
    plugins = raw.get("plugins") or []
    plugins = [plugins] if isinstance(plugins, str) else list(plugins)
    kd_listed = AXOLOTL_KD_PLUGIN in plugins
    known = _kd_keys() if (kd_listed or args.sdd_kd) else None
    for key in raw:
        k = str(key)
        if known is not None and k.startswith("kd_") and k not in known:
            guess = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; known: {', '.join(sorted(known))}"
            problems.append(f"unknown recipe key {k!r} (not a key of axolotl's KD plugin{hint})")
    if not args.sdd_kd:
        if raw.get("kd_trainer") and args.sdd_distill:
            problems.append(
                "kd_trainer: axolotl's KD trainer needs the teacher's log-probs, which only sdd_kd: true writes"
            )
        if "sdd_kd_top_k" in raw:
            warnings.append("sdd_kd_top_k has no effect without sdd_kd: true")
        return problems, warnings
    if not args.sdd_distill:
        problems.append("sdd_kd: needs sdd_distill: true (the log-probs come from the distillation pass)")
    if not kd_listed:
        problems.append(
            f"sdd_kd: list {AXOLOTL_KD_PLUGIN} under plugins (its trainer trains on the log-probs)"
        )
    if not raw.get("kd_trainer"):
        problems.append("sdd_kd: set kd_trainer: true (axolotl's KD plugin swaps in its trainer only then)")
    for key in ("kd_alpha", "kd_ce_alpha", "kd_temperature"):
        value = raw.get(key)
        if value is None:
            problems.append(f"sdd_kd: set {key} (axolotl's KD loss has no default for it)")
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "kd_temperature" and not (number and value > 0):
            problems.append(f"kd_temperature: must be a number > 0, got {value!r}")
        elif key != "kd_temperature" and not (number and 0 <= value <= 1):
            problems.append(f"{key}: must be a number in [0, 1] (axolotl's KD loss weight), got {value!r}")
    if raw.get("kd_alpha") == 0:
        warnings.append("kd_alpha: 0 turns the KD loss off (plain cross-entropy on the distilled set)")
    if raw.get("kd_online_server_base_url"):
        problems.append(
            "kd_online_server_base_url: sdd_kd trains on the stored teacher log-probs, not online"
        )
    datasets = raw.get("datasets") or []
    templates = [("chat_template", raw.get("chat_template"))]
    for i, entry in enumerate(datasets if isinstance(datasets, list) else []):
        if not isinstance(entry, Mapping):
            continue
        templates.append((f"datasets[{i}].chat_template", entry.get("chat_template")))
        if entry.get("type") != "chat_template":
            problems.append(
                f"datasets[{i}]: sdd_kd needs type: chat_template (the KD set is chat rows, read by "
                f"{AXOLOTL_KD_TYPE}), got {entry.get('type')!r}"
            )
    for where, value in templates:
        if value not in (None, "tokenizer_default"):
            problems.append(
                f"{where}: {value!r}: sdd_kd aligns the log-probs to the tokenizer's own chat template "
                "(leave it unset or tokenizer_default)"
            )
    return problems, warnings


def num_layers(model_dir: str | os.PathLike) -> int | None:
    """``num_hidden_layers`` from a model folder's config.json (no weights load), or None."""
    cfg_path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("num_hidden_layers"), int):
            return int(c["num_hidden_layers"])
    return None


def check_prune_range(args: SDDArgs, layers: int | None) -> None:
    """Raise a ValueError naming the key when the pruning settings do not fit a model of ``layers`` blocks."""
    if not args.sdd_prune or layers is None:
        return
    n = args.sdd_prune_num_blocks
    if n >= layers:
        raise ValueError(f"sdd_prune_num_blocks: {n} must be smaller than the model's {layers} blocks")
    if args.sdd_prune_start is not None and args.sdd_prune_start + n > layers:
        raise ValueError(
            f"sdd_prune_start: {args.sdd_prune_start} + sdd_prune_num_blocks {n} exceeds the model's {layers} "
            f"blocks (need sdd_prune_start <= {layers - n})"
        )


def resolve_recipe(cfg: MutableMapping[str, Any], args: SDDArgs) -> str:
    """Resolve a raw recipe in place, before axolotl validates it; returns the local base model path.

    Embedded model names (``smollm2-135m-instruct``) in ``base_model``, ``base_model_config``,
    ``tokenizer_config`` and ``sdd_teacher`` become local folders (``base_model`` also when it is
    to be pruned); ``sdd_teacher`` defaults to the unpruned ``base_model`` (for a ``base_model``
    that ``sdd prune`` wrote: the model it was pruned from); the prune settings are checked
    against the model's block count; ``sdd://`` paths in ``datasets``/``test_datasets``
    become cached jsonl files. Errors name the key, before any weights load.
    """
    from ..models import EMBEDDED_MODELS, resolve_model

    base = cfg.get("base_model")
    if not base:
        raise ValueError("base_model: missing (sdd-plugin needs the model to prune and distil from)")
    base_path = str(base)
    if base_path in EMBEDDED_MODELS or args.sdd_prune:
        base_path = str(resolve_model(base))
    for key in ("base_model_config", "tokenizer_config"):
        if cfg.get(key) is not None and str(cfg.get(key)) in EMBEDDED_MODELS:
            cfg[key] = str(resolve_model(cfg.get(key)))
    done = pre_pruned(base_path)  # pruned already: trained as it is, its unpruned source teaches
    teacher = args.sdd_teacher or (done is not None and pruned_source(done)) or base_path
    if str(teacher) in EMBEDDED_MODELS:
        teacher = str(resolve_model(teacher))
    if args.sdd_prune and done is None:
        check_prune_range(args, num_layers(base_path))
    for list_key in ("datasets", "test_datasets"):
        for entry in cfg.get(list_key) or []:
            if isinstance(entry, dict) and is_data_uri(entry.get("path")):
                entry["path"] = str(resolve_data_uri(entry["path"], entry.get("type")))
    cfg["base_model"] = base_path
    cfg["sdd_teacher"] = str(teacher)
    return base_path


def prune_kwargs(args: SDDArgs) -> dict[str, Any]:
    """The ``sdd_prune_*`` keys as keyword arguments of :func:`sdd_plugin.prune.prune`."""
    kwargs: dict[str, Any] = {
        "num_blocks": args.sdd_prune_num_blocks,
        "metric": args.sdd_prune_metric,
        "calibration": args.sdd_prune_calibration,
        "start": args.sdd_prune_start,
    }
    if args.sdd_prune_calibration_limit:
        kwargs["num_samples"] = args.sdd_prune_calibration_limit
    return kwargs


def prepared_prune(cfg: Mapping[str, Any], args: SDDArgs) -> PruneResult | None:
    """The pruned checkpoint when ``cfg`` was prepared by the plugin already, else None.

    That is: ``base_model`` is an sdd-pruned folder, and pruning its recorded source with this
    recipe's settings gives exactly that folder (:func:`sdd_plugin.prune.pruned_path`). Used for a
    cfg that axolotl validated after ``register`` (e.g. sent to a ray worker, which registers the
    plugin again): validation drops the plugin's own marker key, and pruning again would cut a
    second time."""
    from ..prune.stage import load_prune_result, pruned_path

    base = cfg.get("base_model")
    done = load_prune_result(str(base)) if args.sdd_prune and base else None
    source = done.extra.get("source_path") if done is not None else None
    if not source or not Path(source).is_dir():
        return None
    try:
        same = pruned_path(source, **prune_kwargs(args)).resolve() == Path(str(base)).resolve()
    except (ValueError, FileNotFoundError):
        return None
    return done if same else None


def plan(raw: dict[str, Any], resolve: bool = True) -> dict[str, Any]:
    """What the plugin would do with a raw recipe, without loading weights.

    Returns ``{"args", "base_model", "base_model_path", "layers", "pre_pruned", "prune", "teacher",
    "datasets", "problems", "warnings"}``; problems are strings (an empty list = the recipe is fine).
    A dataset that ``sdd distill`` wrote has ``pre_distilled`` (the file axolotl will read).
    """
    problems: list[str] = []
    warnings: list[str] = []
    out: dict[str, Any] = {"problems": problems, "warnings": warnings, "datasets": []}
    try:
        args = parse_sdd_args(raw)
    except ValueError as exc:
        problems.append(str(exc))
        return out
    out["args"] = args
    base = raw.get("base_model")
    out["base_model"] = base
    if not base:
        problems.append("base_model: missing")
        return out
    base_path: Path | None = None
    layers: int | None = None
    if resolve:
        from ..models import EMBEDDED_MODELS, resolve_model

        if str(base) in EMBEDDED_MODELS or Path(str(base)).expanduser().exists():
            try:
                base_path = resolve_model(base)
                layers = num_layers(base_path)
            except (FileNotFoundError, ValueError) as exc:
                problems.append(f"base_model: {exc}")
        else:  # a hub id: fetch only its config.json (a check must not download the weights)
            try:
                from huggingface_hub import hf_hub_download

                layers = num_layers(Path(hf_hub_download(str(base), "config.json")).parent)
            except Exception as exc:
                problems.append(f"base_model: cannot read config.json of {base!r} from the hub: {exc}")
    out["base_model_path"] = str(base_path) if base_path else None
    out["layers"] = layers
    done = pre_pruned(base_path) if base_path else None
    out["pre_pruned"] = done is not None
    if done is not None:
        out["prune"] = (
            f"none: base_model is pruned already (blocks {done.removed_blocks} removed from "
            f"{pruned_source(done)}; {done.num_layers_after} blocks), trained as it is"
        )
    elif args.sdd_prune:
        try:
            check_prune_range(args, layers)
        except ValueError as exc:
            problems.append(str(exc))
        where = (
            f"blocks {args.sdd_prune_start}..{args.sdd_prune_start + args.sdd_prune_num_blocks - 1} (sdd_prune_start)"
            if args.sdd_prune_start is not None
            else f"the {args.sdd_prune_num_blocks} contiguous blocks with the lowest {args.sdd_prune_metric} distance"
        )
        after = f" -> {layers - args.sdd_prune_num_blocks}" if layers else ""
        out["prune"] = f"remove {where}; blocks {layers or '?'}{after}"
    else:
        out["prune"] = "off (train the unpruned model)"
    teacher = (
        args.sdd_teacher
        or (done is not None and pruned_source(done))
        or (str(base_path) if base_path else base)
    )
    out["teacher"] = f"{teacher} (unpruned base_model)" if not args.sdd_teacher else teacher
    datasets = raw.get("datasets") or []
    if not isinstance(datasets, list) or not datasets:
        problems.append("datasets: the recipe lists no datasets")
        datasets = []
    for i, entry in enumerate(datasets):
        if not isinstance(entry, dict) or not entry.get("path"):
            problems.append(f"datasets[{i}]: needs a path")
            continue
        info: dict[str, Any] = {"index": i, "path": entry.get("path"), "type": entry.get("type")}
        path = str(entry["path"])
        if is_data_uri(path):
            try:
                info["resolved"] = str(resolve_data_uri(path, entry.get("type"))) if resolve else None
            except ValueError as exc:
                problems.append(str(exc))
        elif looks_local(path) and not Path(path).expanduser().exists():
            problems.append(f"datasets[{i}]: data file {path} does not exist")
        ready = pre_distilled(info.get("resolved") or path)
        if ready is not None:
            info["pre_distilled"] = str(ready.kd if args.sdd_kd and ready.kd else ready.rows)
            if args.sdd_kd and ready.kd is None:
                problems.append(
                    f"datasets[{i}]: {path} was distilled without KD log-probs (sdd distill --kd-top-k)"
                )
        elif args.sdd_distill:
            try:
                info["format"] = dataset_format(entry, i)
            except ValueError as exc:
                problems.append(str(exc))
        out["datasets"].append(info)
    kd, kd_warnings = kd_problems(raw, args)
    problems.extend(kd)
    warnings.extend(kd_warnings)
    out["kd"] = (
        f"on: top-{args.sdd_kd_top_k} teacher log-probs per token -> axolotl KD trainer (kd_alpha "
        f"{raw.get('kd_alpha')}, kd_ce_alpha {raw.get('kd_ce_alpha')}, kd_temperature {raw.get('kd_temperature')})"
        if args.sdd_kd
        else "off"
    )
    if args.sdd_distill and args.sdd_distill_limit:
        warnings.append(
            f"sdd_distill_limit={args.sdd_distill_limit}: only that many rows per dataset are trained on"
        )
    return out

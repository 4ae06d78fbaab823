# perturbprobe — `make demo` runs the main job, `make test` runs the tests.
# Both build the virtual environment first (idempotent: re-runs only when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/perturbprobe demo

lint: setup
	$(BIN)/ruff check perturbprobe tests benchmarks
	$(BIN)/ruff format --check perturbprobe tests benchmarks

test: setup lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

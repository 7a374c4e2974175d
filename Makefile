# The two commands: `make demo` and `make test`. Each creates or updates .venv first.
# TORCH_SPEC picks the torch build: the CPU build by default; GPU users pass e.g.
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCHATTACKS_SPEC ?= torchattacks==3.5.1
BIN := $(VENV)/bin
LINT_PATHS := src tests $(wildcard benchmarks/*.py)
# glibc otherwise returns large activation buffers to the OS every step (2x slower on CPU).
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296
export MALLOC_TOP_PAD_ ?= 268435456

.PHONY: demo test lint format bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Core install: torch first (so pip resolves our `torch>=2.3` against the chosen build), then us.
$(VENV)/.core-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Test extras; torchattacks declares torchvision, which must not be installed beside the CPU torch.
$(VENV)/.test-stamp: $(VENV)/.core-stamp
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps "$(TORCHATTACKS_SPEC)"
	touch $@

demo: $(VENV)/.core-stamp
	$(BIN)/robustlab demo

lint: $(VENV)/.test-stamp
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

format: $(VENV)/.test-stamp
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

test: lint
	$(BIN)/python -m pytest -q

# Speed side by side with peers (torchattacks, reference loops): benchmarks/results/latest.{json,md}.
bench: $(VENV)/.test-stamp
	$(BIN)/python benchmarks/run.py

# The figures and tables of docs/reproducing.md, from its tiny-scale commands (a few minutes).
docs: $(VENV)/.core-stamp
	$(BIN)/python docs/build.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

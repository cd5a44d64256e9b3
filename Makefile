# splitdnn developer commands. Everything runs inside .venv, which `make setup` creates.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo crds lint bench bench-sweep clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch and torchvision are pinned as a pair: other combinations fail to import together.
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/splitdnn demo

crds: setup
	$(BIN)/splitdnn crds --out crds/

lint: setup
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/bench_graph.py --write docs/benchmarks.md

# Every torchvision classification model, one subprocess each (tens of minutes).
bench-sweep: setup
	$(BIN)/python bench/sweep_torchvision.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

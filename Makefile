# `make test` and `make demo` create the environment on first use (.venv), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/nerveseg demo --overwrite

lint: $(STAMP)
	$(BIN)/ruff check nerveseg_cli tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_rle.py
	$(BIN)/python benchmarks/bench_score.py

clean:
	rm -rf $(VENV) nerveseg-demo .pytest_cache .ruff_cache

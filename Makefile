# Every target builds .venv from nothing when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:2525
SPOOL ?= ./spool

.PHONY: run test bench load lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench,lint,load]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sink serve --listen $(LISTEN) --spool $(SPOOL)

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m loadtest.bench

load: $(STAMP)
	$(BIN)/python -m loadtest.load

lint: $(STAMP)
	$(BIN)/ruff check sink tests loadtest
	$(BIN)/mypy sink

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Every target builds .venv from nothing when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LISTEN ?= 127.0.0.1:2525
SPOOL ?= ./spool
# Grafana's dashboard types for tests/test_dashboard_schema.py, installed only where npm exists;
# without them that test skips (and fails under CI=true).
SCHEMA_CHECK := grafana/schema-check
SCHEMA_STAMP := $(SCHEMA_CHECK)/node_modules/.installed
NPM := $(shell command -v npm 2>/dev/null)

.PHONY: run test bench load lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench,lint,load]'
	touch $(STAMP)

$(SCHEMA_STAMP): $(SCHEMA_CHECK)/package.json $(SCHEMA_CHECK)/package-lock.json
	npm ci --prefix $(SCHEMA_CHECK) --no-audit --no-fund --ignore-scripts --silent
	touch $(SCHEMA_STAMP)

run: $(STAMP)
	$(BIN)/sink serve --listen $(LISTEN) --spool $(SPOOL)

test: $(STAMP) $(if $(NPM),$(SCHEMA_STAMP))
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m loadtest.bench

load: $(STAMP)
	$(BIN)/python -m loadtest.load

lint: $(STAMP)
	$(BIN)/ruff check sink tests loadtest
	$(BIN)/mypy sink

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(SCHEMA_CHECK)/node_modules

# qfsync's task runner. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp is newer than pyproject.toml once the venv holds what it asks for.
STAMP := $(VENV)/.installed
DEMO_PORT ?= 8765
DEMO_JOBS ?= 3000

.PHONY: help install test lint fmt demo bench clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[postgres,mysql]' --group test --group lint
	touch $(STAMP)

install: $(STAMP) ## Create .venv with qfsync, its database drivers and the test tools.

test: $(STAMP) ## Run the whole suite (SQLite, plus PostgreSQL and MariaDB from QFSYNC_TEST_*_URL).
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff and mypy.
	$(BIN)/ruff check qfsync tests migrations bench
	$(BIN)/ruff format --check qfsync tests migrations bench
	$(BIN)/mypy

fmt: $(STAMP) ## Format and fix imports.
	$(BIN)/ruff check --fix --select I qfsync tests migrations bench
	$(BIN)/ruff format qfsync tests migrations bench

demo: $(STAMP) ## Fake API on loopback -> sync into qfsync.db, twice -> run history. No credentials.
	@bash scripts/demo.sh $(DEMO_PORT) $(DEMO_JOBS)

bench: $(STAMP) ## Benchmark qfsync against the walk alone and a dlt pipeline; writes bench/RESULTS.md.
	@bash bench/run.sh

clean: ## Remove the venv, caches and the demo database.
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache qfsync.db* *.egg-info

# Two commands on a fresh clone: `make up` runs the whole system, `make test` passes.
# Both bootstrap .venv themselves and are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What running the system needs (pyproject's dependencies), and on top of it what testing
# and linting need (the `dev` extra: pytest, mypy, ruff, Playwright, scikit-learn, ...).
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
SCHEMA := journeys.schema.json

.PHONY: up test test-long test-fast test-api test-e2e test-scale bench lint typecheck install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# The JSON Schema the first line of journeys.yaml points editors at (README, Editor
# support); generated, so it always matches the installed language (.gitignore'd).
$(SCHEMA): $(STAMP) $(wildcard engine/*.py)
	$(BIN)/journeys schema -o $@

up: $(SCHEMA)

up: $(STAMP)
	$(BIN)/journeys up

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(DEV_STAMP)
	$(BIN)/mypy engine rules workflows activities channels service risk_models runtime worker.py bench

# Everything: lint, types, and every test group (it installs MLServer's venv and Chromium).
test: lint typecheck mlserver browser
	$(BIN)/python -m pytest -q -m "not long and not scale" $(PYTEST_ARGS)

# Tests left out of `make test` (marker `long`) to keep it under 20 minutes: the
# 20,000-event run of issue #14, about 4 minutes, and 100 real stops of `journeys up`
# (every way a stop arrives, 20 times each; issue #16), about 10 minutes
# (docs/testing.md).
test-long: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -s -m long

# The quick loop (docs/testing.md): unit and language tests, the workflow tests on the
# time-skipping server, delivery to loopback servers, the model adapters without MLServer.
# Measured on 2 cores: 110 s of tests, 117 s wall (2026-12-06; then two ~2 s tests went `slow`); the API tests (2 min alone), the slow
# groups (e2e, mlserver, browser) and the tests marked `slow` are left out.
FAST_GROUPS := tests/unit tests/risk_models tests/channels tests/workflows
SLOW_MARKERS := not e2e and not mlserver and not browser and not slow and not scale

test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m "$(SLOW_MARKERS)" $(FAST_GROUPS)

test-api: $(DEV_STAMP)
	$(BIN)/python -m pytest -q tests/api

test-e2e: $(DEV_STAMP) browser
	$(BIN)/python -m pytest -q -m e2e

# Scale-out, shown working (issue #20; docs/testing.md): every stack with two workers and
# two API processes on one dev server and PostgreSQL (JOURNEYS_E2E_SCALE=1): the e2e
# journey suite, the worker crash test, and the mixed load of tests/scale (marker `scale`,
# left out of `make test`). PostgreSQL is required: JOURNEYS_TEST_DATABASE_URL, else CI's
# database as .ci/run names it; its tables are dropped and created.
SCALE_DATABASE_URL := postgresql://postgres@127.0.0.1:5432/test
SCALE_E2E := tests/e2e/test_journeys_e2e.py tests/e2e/test_worker_crash.py

test-scale: $(DEV_STAMP)
	JOURNEYS_TEST_DATABASE_URL="$${JOURNEYS_TEST_DATABASE_URL:-$(SCALE_DATABASE_URL)}" \
	JOURNEYS_E2E_SCALE=1 $(BIN)/python -m pytest -q $(SCALE_E2E) tests/scale $(PYTEST_ARGS)

# Every measurement of bench/ and one table of issue #20's targets (bench/README.md); the
# `bench` extra adds zen-engine (the rules' reference), py-spy and rich. An hour or more on
# 2 cores at full sizes: `make bench BENCH_ARGS=--quick` for a smoke run.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The console's browser test drives Debian's Chromium through Playwright; Playwright's own
# browser download is never used (it cannot work here, and the system one is enough).
CHROMIUM := /usr/bin/chromium

.PHONY: browser
browser: $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "Debian's chromium is needed for the console test: sudo apt-get install chromium" >&2; \
		exit 1; \
	fi

# MLServer, the Open Inference Protocol server the model tests call, pins packages that
# clash with ours: it gets its own venv (the tests build it too when it is missing).
MLSERVER_VENV := .venv-mlserver
MLSERVER_REQUIREMENTS := tests/risk_models/mlserver-requirements.txt

.PHONY: mlserver
mlserver: $(MLSERVER_VENV)/.installed

$(MLSERVER_VENV)/.installed: $(MLSERVER_REQUIREMENTS)
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r $(MLSERVER_REQUIREMENTS)
	touch $@

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) $(SCHEMA) .mypy_cache .ruff_cache .pytest_cache .hypothesis test-artifacts

# `make demo` sets up and runs logstats on the bundled fixtures; `make test` sets up and runs
# every test (installing the Debian packages the real-MTA tests need), lint and type checks,
# then the date-sensitive tests again with the clock moved ahead.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_DB ?= var/demo.duckdb

.PHONY: default setup demo test check lint bench clean man
default: test

$(BIN)/logstats: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# the web UI's browser libraries (npm ci from web/package-lock.json; git-ignored copy)
logstats/web/static/vendor/uPlot.iife.min.js: web/package.json web/package-lock.json
	$(PYTHON) web/vendor.py --force

setup: $(BIN)/logstats logstats/web/static/vendor/uPlot.iife.min.js

demo: setup
	rm -f $(DEMO_DB) $(DEMO_DB).wal
	$(BIN)/logstats backfill --config config/logstats.yaml --db $(DEMO_DB) fixtures/demo/*
	$(BIN)/logstats query emailtrack --config config/logstats.yaml --db $(DEMO_DB) --all

lint: setup
	$(BIN)/ruff check logstats tests bench
	$(BIN)/mypy

# The backfill, daemon and API tests run a second time with the wall clock 400 days ahead
# (tests/clockshift): no test may derive log lines, windows or expectations from the date.
SHIFTED_TESTS ?= tests/test_backfill.py tests/test_cli.py tests/test_daemon.py \
                 tests/test_api.py tests/test_isolation.py $(wildcard tests/test_rotation.py) \
                 $(wildcard tests/test_failures.py) tests/test_metrics.py tests/test_http.py \
                 tests/test_track_cli.py tests/test_emailtrack_search.py \
                 tests/test_events_api.py tests/test_web.py tests/test_central.py

test: setup lint
	[ ! -f tests/mta/install.sh ] || bash tests/mta/install.sh
	$(BIN)/pytest
	LOGSTATS_TEST_SHIFT_DAYS=400 $(BIN)/pytest -p no:cacheprovider $(SHIFTED_TESTS)

# docs/logstats.1 from the argparse parser (tests/test_install.py holds it current)
man: setup
	$(BIN)/python -m tests.manpage

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache

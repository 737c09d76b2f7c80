PY ?= .venv/bin/python

.PHONY: install test test-all check-lowest lint format pipeline

install:
	python3.11 -m venv .venv && .venv/bin/pip install -e ".[dev]"

test:
	$(PY) -m pytest -q

test-all:
	$(PY) -m pytest -q -m ""

check-lowest:  # the model and evaluation tests on the lowest dependency versions pyproject allows
	PYTHON=$(PY) bash scripts/check_lowest_versions.sh

lint:
	$(PY) -m ruff check scl_slt tests scripts
	$(PY) -m ruff format --check scl_slt tests scripts

format:
	$(PY) -m ruff format scl_slt tests scripts
	$(PY) -m ruff check --fix scl_slt tests scripts

pipeline:
	$(PY) -m scl_slt.pipeline

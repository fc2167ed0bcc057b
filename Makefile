# The two commands a fresh machine needs are `make lab` and `make test`; each installs what is missing.
PY := .venv/bin/python
PYTEST_ARGS ?= --durations=10

.PHONY: deps test lab lab-down lab-status bench lint proto fuzz

deps:
	deps/install.sh all

proto: deps
	$(PY) -m backend.proto.build

# Lint first: a style slip fails in seconds, not after the suite.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: deps
	$(PY) -m ruff check backend lab tests bench fuzz setup.py
	.venv/bin/lint-imports  # pyproject.toml's layers contract over backend/

lab: deps
	$(PY) -m backend.cli lab up

lab-down:
	$(PY) -m backend.cli lab down

lab-status:
	$(PY) -m backend.cli lab status

bench: deps
	$(PY) -m bench

# Long fuzz runs (minutes): not part of `make test`.
fuzz: deps
	$(PY) -m fuzz

# The two commands of the README. Both create/reuse .venv with pinned versions first.
VENV ?= .venv
CONFIG ?= configs/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench

setup:
	./scripts/setup.sh

run: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/dartflow quickstart $(CONFIG)

test: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Without the slow end-to-end tests (engine, real processes): for quick iteration only; CI runs `make test`.
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/store.py

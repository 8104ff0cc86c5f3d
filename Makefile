# polyexp: `make run` runs the default experiment, `make test` runs the tests.
# Each sets up .venv first (once, and again when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: run test lint bench ui clean

$(READY): pyproject.toml constraints.txt
	@echo "polyexp: installing polyexp and its dependencies (torch CPU, MLflow, Hydra, ~2 GB) into $(VENV); the first time takes about 3 minutes"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

run: $(READY)  ## the default experiment; pass overrides as ARGS='model=sequential optimizer=rmsprop'
	$(BIN)/polyexp $(ARGS)

test: $(READY)  ## the whole suite, one worker per core (about 6 min on two cores; ARGS='-m "not slow"': about 1 min)
	$(BIN)/python -m pytest -n auto --dist loadgroup $(ARGS)

lint: $(READY)
	$(BIN)/ruff check polyexp hydra_plugins tests benchmarks examples
	$(BIN)/ruff format --check polyexp hydra_plugins tests benchmarks examples
	$(BIN)/mypy

bench: $(READY)  ## polyexp against the seed programs; writes benchmarks/RESULTS.md (~10 min)
	$(BIN)/python benchmarks/bench.py $(ARGS)

ui: $(READY)  ## the MLflow UI on polyexp's store (polyexp-ui); prints the URL to open; ARGS='--port 5001'
	$(BIN)/polyexp-ui $(ARGS)

clean:
	rm -rf $(VENV) outputs/runs outputs/multirun

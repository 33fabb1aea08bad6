# Two entry points for a fresh machine:
#   make run   - install into .venv and run the default pipeline (dvc repro)
#   make test  - install into .venv and run the whole test suite
#   make fashion - the paper's ratios on real images (Fashion-MNIST) as a DVC experiment
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test fashion clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/rnp report

fashion: setup
	-PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp remove fashion-mnist 2>/dev/null  # a rerun replaces it (DVC's run cache keeps the work)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp run -n fashion-mnist $$($(BIN)/rnp preset fashion_mnist)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/rnp report

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n 2 --durations=10

clean:
	rm -rf $(VENV) .pytest_cache

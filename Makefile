# The two quick-start commands (`make demo`, `make test`) work on a fresh machine:
# they create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scaleset-listener demo

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check

check: test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

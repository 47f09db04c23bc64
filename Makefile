# The two quick-start commands (`make demo`, `make test`) work on a fresh machine:
# they create .venv and install both distributions into it first, editable: the product
# (with its dev tools) and the simulator (sim/, scaleset-listener-sim) the demo and tests use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check install clean real-openstack-up real-openstack-down test-real

$(STAMP): pyproject.toml sim/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./sim
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scaleset-listener demo

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check

check: test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The real-Nova integration tier (tests marked real_openstack; CI runs them in `make test`).
real-openstack-up:
	tests/real_openstack/up

real-openstack-down:
	tests/real_openstack/stop

test-real: $(STAMP)
	REQUIRE_REAL_OPENSTACK=1 $(BIN)/pytest -m real_openstack -p no:cacheprovider

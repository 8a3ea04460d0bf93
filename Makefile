# The README's two commands: `make demo` and `make test`. Both set themselves up on first
# run (Debian packages when root, a virtual environment with the Python packages) and are
# quiet and quick on later runs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := mosquitto gcc-avr avr-libc binutils-avr simavr libsimavr-dev libelf-dev pkg-config
PYTEST_ARGS ?=

.PHONY: test demo deps system-deps lint typecheck unit integration bench clean

system-deps:
	@scripts/ensure-system-packages.sh $(SYSTEM_PACKAGES)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python packages into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import agent, fleet, paho, pydantic_settings, typer, pytest' 
	@touch $(STAMP)

deps: system-deps $(STAMP)

lint: deps
	@$(VENV)/bin/ruff check agent fleet tests bench firmware/protocol models
	@$(VENV)/bin/ruff format --check --quiet agent fleet tests bench firmware/protocol models

typecheck: deps
	@$(VENV)/bin/mypy

unit: deps
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: deps
	@$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: lint typecheck
	@$(PY) -m pytest $(PYTEST_ARGS)

demo: deps
	@$(PY) -m fleet.demo

bench: deps
	@$(PY) -m bench.bench_agent
	@$(PY) -m bench.bench_serial

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

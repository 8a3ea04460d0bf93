# The README's two commands: `make demo` and `make test`. Both set themselves up on first
# run (Debian packages when root, a virtual environment with the Python packages) and are
# quiet and quick on later runs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# tflite-runtime 2.14, its last release, crashes with NumPy 2: its backend is tested in a
# separate environment with numpy<2, as part of `make test`.
TFLITE_VENV := .venv-tflite
TFLITE_PY := $(TFLITE_VENV)/bin/python
TFLITE_STAMP := $(TFLITE_VENV)/.installed
TFLITE_COMPAT_TESTS := tests/integration/test_tflite_runtime_compat.py
# TensorFlow Serving's own gRPC client (tensorflow-serving-api) needs the tensorflow package
# for its protos: it gets an environment of its own (tensorflow-cpu; about 20 s from the pip
# cache), and its test file a pass of its own against an `edge-agent serve` of $(PY).
TFS_VENV := .venv-tfserving
TFS_PY := $(TFS_VENV)/bin/python
TFS_STAMP := $(TFS_VENV)/.installed
TFS_CLIENT_TESTS := tests/integration/test_grpc_tf_serving.py
# Rebuilding the reference models needs TensorFlow and PyTorch (CPU): only `make models` and
# `make bench-models` set this environment up; tests and the demo use the committed files.
MODELS_VENV := .venv-models
MODELS_STAMP := $(MODELS_VENV)/.installed
MINILM := models/build/minilm/minilm-int8.onnx
SYSTEM_PACKAGES := mosquitto gcc-avr avr-libc binutils-avr simavr libsimavr-dev libelf-dev pkg-config prometheus postgresql chromium
PYTEST_ARGS ?=
# Workers for the parallel pass of `make test` (pytest-xdist). Most integration tests wait on
# brokers, agents and timers, not the CPU, so more workers than cores pays; tests marked
# `serial` (they want the CPU to themselves) run after it, alone (tests/conftest.py).
# `make test TEST_WORKERS=0` runs the first pass in one process.
TEST_WORKERS ?= 4

.PHONY: test demo deps system-deps lint typecheck unit integration bench bench-models models clean install deb protos

system-deps:
	@scripts/ensure-system-packages.sh $(SYSTEM_PACKAGES)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python packages into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import agent, fleet, edge_contract, edge_runtime, paho, pydantic_settings, typer, pytest, xdist' 
	@touch $(STAMP)

# The gRPC message classes, generated with the environment's own grpcio-tools (so that they
# match its protobuf runtime; under a second) before anything imports them; gitignored.
protos: $(STAMP)
	@$(PY) agent/inference/protos/generate.py >/dev/null

$(TFLITE_STAMP): pyproject.toml
	@test -x $(TFLITE_PY) || $(PYTHON) -m venv $(TFLITE_VENV)
	@echo "installing tflite-runtime with numpy<2 into $(TFLITE_VENV)"
	@$(TFLITE_PY) -m pip install -q --disable-pip-version-check 'numpy<2' 'tflite-runtime==2.14.0' pytest pydantic structlog 2>&1 | grep -v '^WARNING: Location' || true
	@$(TFLITE_PY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
	@$(TFLITE_PY) -c 'import agent, numpy, tflite_runtime.interpreter, pytest'
	@touch $(TFLITE_STAMP)

# tensorflow-serving-api declares `tensorflow` (the big package): tensorflow-cpu brings the
# same modules, so the client is installed without its declared dependencies.
$(TFS_STAMP): pyproject.toml
	@test -x $(TFS_PY) || $(PYTHON) -m venv $(TFS_VENV)
	@echo "installing tensorflow-cpu and tensorflow-serving-api into $(TFS_VENV)"
	@$(TFS_PY) -m pip install -q --disable-pip-version-check 'tensorflow-cpu==2.21.*' pytest 2>&1 | grep -v '^WARNING: Location' || true
	@$(TFS_PY) -m pip install -q --disable-pip-version-check --no-deps 'tensorflow-serving-api==2.21.*' 2>&1 | grep -v '^WARNING: Location' || true
	@$(TFS_PY) -c 'import tensorflow_serving.apis.prediction_service_pb2_grpc, pytest' >/dev/null 2>&1 \
		|| { echo 'tensorflow-serving-api does not import in $(TFS_VENV)' >&2; exit 1; }
	@touch $(TFS_STAMP)

$(MODELS_STAMP): pyproject.toml
	@test -x $(MODELS_VENV)/bin/python || $(PYTHON) -m venv $(MODELS_VENV)
	@echo "installing TensorFlow, PyTorch (CPU) and the model tools into $(MODELS_VENV)"
	@$(MODELS_VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[models]' 2>&1 | grep -v '^WARNING: Location' || true
	@touch $(MODELS_STAMP)

$(MINILM): $(MODELS_STAMP) models/minilm/build.py models/minilm/sentences.py
	@$(MODELS_VENV)/bin/python models/minilm/build.py

# Rebuild every reference model from the data its package ships.
models: $(MODELS_STAMP)
	@$(MODELS_VENV)/bin/python models/digits/build.py
	@$(MODELS_VENV)/bin/python models/digits/distill.py
	@$(MODELS_VENV)/bin/python models/minilm/build.py
	@$(MODELS_VENV)/bin/python models/tinybert/build.py

deps: system-deps $(STAMP) protos

lint: deps
	@$(VENV)/bin/ruff check agent fleet edge_contract edge_runtime devtools tests bench firmware/protocol models
	@$(VENV)/bin/ruff format --check --quiet agent fleet edge_contract edge_runtime devtools tests bench firmware/protocol models

typecheck: deps
	@$(VENV)/bin/mypy

unit: deps
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: deps
	@$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: lint typecheck $(TFLITE_STAMP) $(TFS_STAMP)
	@$(PY) -m pytest -n $(TEST_WORKERS) --ignore=$(TFLITE_COMPAT_TESTS) --ignore=$(TFS_CLIENT_TESTS) $(PYTEST_ARGS)
	@$(PY) -m pytest --serial-only --ignore=$(TFLITE_COMPAT_TESTS) --ignore=$(TFS_CLIENT_TESTS) $(PYTEST_ARGS)
	@$(TFLITE_PY) -m pytest -q -p no:cacheprovider --noconftest $(TFLITE_COMPAT_TESTS)
	@EDGE_AGENT_PYTHON=$(abspath $(PY)) TF_CPP_MIN_LOG_LEVEL=2 $(TFS_PY) -m pytest -q -p no:cacheprovider --noconftest $(TFS_CLIENT_TESTS)

demo: deps
	@$(PY) -m devtools.demo

bench: deps
	@$(PY) -m bench.bench_agent
	@$(PY) -m bench.bench_serial
	@$(PY) -m bench.bench_ota
	@$(PY) -m bench.bench_rollout
	@$(PY) -m bench.bench_dashboard

bench-models: deps $(MINILM)
	@$(PY) -m bench.bench_models
	@$(PY) -m bench.bench_serving

# On a board: the agent in /opt/edge-agent, its unit, config, state directory and user
# (scripts/install.sh, docs/install.md). `make install DESTDIR=/tmp/root` stages it instead and
# touches nothing outside DESTDIR. INSTALL_ARGS passes options, e.g. --extras inference.
DESTDIR ?=
INSTALL_ARGS ?=
install:
	@DESTDIR="$(DESTDIR)" scripts/install.sh $(INSTALL_ARGS)

# dist/edge-agent_<version>_<arch>.deb from the same staging (scripts/build-deb.sh).
deb:
	@scripts/build-deb.sh $(INSTALL_ARGS)

clean:
	rm -rf $(VENV) $(TFLITE_VENV) $(TFS_VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

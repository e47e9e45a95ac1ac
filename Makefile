# Everything runs from a project-local virtualenv that `make setup` creates once.
# A machine whose python3 already has torch (e.g. a CUDA build) shares it with the venv;
# otherwise torch==2.13.0 resolves to the local CPU wheel on our dev/CI machines.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# `make demo` installs what running needs; `make test` (and `make setup`) the developer extras on top
RUNTIME := $(VENV)/.runtime
DEV     := $(VENV)/.dev
PIP     := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup test test-fast lint browser slurm demo clean

setup: $(DEV)

$(RUNTIME): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "setup: reusing the system torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@echo "setup: torch, then diamusic and its runtime dependencies (quiet; a few minutes the first time)"
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) torch==2.13.0
	@$(PIP) --no-deps "tinysoundfont>=0.3,<0.4"
	@$(PIP) -e .
	@# librosa's pitch and beat trackers are numba code compiled on first use (benchmarks/RESULTS.md section 14) and
	@# cached in the venv: compile them once here, not inside the first test or demo that analyses audio
	@echo "setup: compiling librosa's audio kernels once"
	@$(PY) -c "from diamusic.audio_metrics import compile_kernels; compile_kernels()"
	@touch $(RUNTIME)

$(DEV): $(RUNTIME)
	@echo "setup: the developer extras (pytest, ruff, trackers, peft, datasets)"
	@$(PIP) -e ".[dev]"
	@touch $(DEV)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

test: lint browser slurm
	$(VENV)/bin/python -m pytest

# the inner loop: the suite without the tests marked integration (see the marker in pyproject.toml)
test-fast: lint
	$(VENV)/bin/python -m pytest -m "not integration"

# the report's test opens it in a real browser: Debian's chromium, installed when missing and possible
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "note: chromium is not installed and could not be; the report's browser test will be skipped"

# the SLURM launcher's test submits to a real single-node cluster (Debian's slurm-wlm and munge, started as
# root with its configuration under /tmp/diamusic-slurm), where one can run here
slurm:
	@bash scripts/local-slurm.sh

demo: $(RUNTIME)
	$(VENV)/bin/diamusic demo

clean:
	rm -rf $(VENV) runs/demo

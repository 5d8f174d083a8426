# make run   the whole local stack in the foreground (Ctrl-C stops all of it)
# make test  the whole test suite, against real services and workers
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install run test lint format bench clean

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: this exact spec installs the local CPU build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(INSTALLED)

install: $(INSTALLED)

run: $(INSTALLED)
	$(PY) -m devstack run

test: $(INSTALLED)
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(INSTALLED)
	$(PY) -m bench.cost
	$(PY) -m bench.throughput
	$(PY) -m bench.interactive
	$(PY) -m bench.peers
	$(PY) -m bench.overhead
	$(PY) -m bench.search
	$(PY) -m bench.summarize
	$(PY) -m bench.autoscale
	$(PY) -m bench.backends
	$(PY) -m bench.privacy
	$(PY) -m bench.soak --minutes 2

clean:
	rm -rf $(VENV) .devstack .pytest_cache .ruff_cache

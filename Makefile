# make run   the whole local stack in the foreground (Ctrl-C stops all of it)
# make test  the whole test suite, against real services and workers
# make backup [BACKUP_DIR=dir]          PostgreSQL and Milvus to dir (default backups/convoq-<UTC time>)
# make restore BACKUP_DIR=dir [FORCE=1] into empty stores (FORCE=1: replace what they hold)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# No process fetches anything at run time (config/offline.py sets these in every process too).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install run test browser lint format bench clean backup restore

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

backup: $(INSTALLED)
	$(PY) -m devstack backup $(BACKUP_DIR)

restore: $(INSTALLED)
	@test -n "$(BACKUP_DIR)" || { echo "make restore BACKUP_DIR=<a backup's directory>" >&2; exit 2; }
	$(PY) -m devstack restore "$(BACKUP_DIR)" $(if $(FORCE),--force)

# Debian's chromium and chromedriver for tests/test_browser.py, installed (apt-get) when
# missing, before pytest starts: the suite's time is the tests' own.
browser: $(INSTALLED)
	$(PY) -m tests.browser_setup

test: $(INSTALLED) browser
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(INSTALLED)
	$(PY) -m bench.report $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .devstack .pytest_cache .ruff_cache

# Every target bootstraps .venv first, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test bench soak lint format clean dovecot postgresql chromium

# Debian's Dovecot: the real IMAP server behind the reply-mailbox tests and `make dev`.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
dovecot:
	@command -v dovecot >/dev/null 2>&1 || test -x /usr/sbin/dovecot || { \
	  echo "installing Debian's dovecot-imapd (IMAP server for the reply mailbox)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dovecot-imapd >/dev/null; }

# Debian's PostgreSQL binaries: the tests start a throwaway cluster with initdb/pg_ctl.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql (the ledger's production database, for the tests)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

# Debian's Chromium: the dashboard's browser test drives it with Playwright (never a
# browser Playwright downloads).
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium (headless browser for the dashboard test)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP) dovecot
	$(BIN)/python worker.py --dev $(ARGS)

test: $(STAMP) dovecot postgresql chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP) postgresql
	$(BIN)/python -m bench $(ARGS)

# The chaos soak (about 15 minutes): not part of `make test`.
soak: $(STAMP)
	$(BIN)/python -m soak $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# `make demo` and `make test` work from a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean chromium postgresql

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/resnetcls demo --out demo-run

# The report test renders report.html in headless Chromium. Install it with apt where we can (root, or
# passwordless sudo); never fail here: without Chromium that one test skips and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "chromium: no apt-get here; the report rendering test will skip"; \
	else \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	    else echo "chromium: not root and no passwordless sudo; the report rendering test will skip"; exit 0; fi; \
	    echo "installing chromium with apt-get (for the report rendering test)"; \
	    ($$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	        chromium) >/tmp/resnetcls-apt-chromium.log 2>&1 \
	        || echo "chromium: apt-get failed (see /tmp/resnetcls-apt-chromium.log); the report rendering test will skip"; \
	fi

# The tune test shares one Optuna study between two workers through a real PostgreSQL server, which it starts
# itself (initdb + pg_ctl in a temporary folder). Install Debian's package the same way as Chromium; without it
# that one test skips and says why.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "postgresql: no apt-get here; the shared-study tune test will skip"; \
	else \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	    else echo "postgresql: not root and no passwordless sudo; the shared-study tune test will skip"; exit 0; fi; \
	    echo "installing postgresql with apt-get (for the shared-study tune test)"; \
	    ($$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	        postgresql) >/tmp/resnetcls-apt-postgresql.log 2>&1 \
	        || echo "postgresql: apt-get failed (see /tmp/resnetcls-apt-postgresql.log); the shared-study tune test will skip"; \
	fi

test: $(STAMP) chromium postgresql
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-run runs .pytest_cache

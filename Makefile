# `make demo`, `make test` and `make docs` work from a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs install clean chromium postgresql

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

# Debian packages that one test each needs (it starts or drives the program itself): installed with apt where we
# can (root, or passwordless sudo); never fail here: without the package that test skips and says why.
# $(1): the package, $(2): a shell test that it is already there, $(3): the test that needs it.
define apt_install
	@if $(2); then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "$(1): no apt-get here; $(3) will skip"; \
	else \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	    else echo "$(1): not root and no passwordless sudo; $(3) will skip"; exit 0; fi; \
	    echo "installing $(1) with apt-get (for $(3))"; \
	    ($$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	        $(1)) >/tmp/resnetcls-apt-$(1).log 2>&1 \
	        || echo "$(1): apt-get failed (see /tmp/resnetcls-apt-$(1).log); $(3) will skip"; \
	fi
endef

# The report test renders report.html in headless Chromium.
chromium:
	$(call apt_install,chromium,command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1,the report rendering test)

# The tune test shares one Optuna study between two workers through a real PostgreSQL server, which it starts
# itself (initdb + pg_ctl in a temporary folder).
postgresql:
	$(call apt_install,postgresql,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1,the shared-study tune test)

test: $(STAMP) chromium postgresql
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or a docstring warning fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) demo-run runs .pytest_cache site

# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test check lint typecheck bench clean browser screenshots

venv: $(STAMP)

# Re-installs when pyproject.toml changes; editable so the tree under daemon/ is what runs.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "focuswatch needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
		{ echo "$(PYTHON) has no venv module (Debian/Ubuntu: apt install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/focuswatch demo

# The whole suite: what CI runs (the web console's browser tests need Chromium).
test: venv browser lint typecheck
	$(BIN)/python -m pytest -q

# Debian's chromium and chromium-driver for the web console's browser tests and the
# README's screenshots: installed with apt-get only when one of them is missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" -ne 0 ]; then \
		echo "the web console's browser tests need /usr/bin/chromium and /usr/bin/chromedriver:"; \
		echo "  not root, so not installing them; run as root: apt-get install -y chromium chromium-driver"; \
		echo "  (without them those tests are skipped)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "no apt-get here: install chromium and its chromedriver as /usr/bin/chromium and /usr/bin/chromedriver"; \
	fi

# Screenshots of the console's pages for the README (docs/screens/*.png).
screenshots: venv browser
	$(BIN)/python bench/screenshots.py --out docs/screens

# The edit loop: lint, types and the fast tests (no Dask clusters, no whole-service
# subprocesses, no demo; those are marked slow).
check: venv lint typecheck
	$(BIN)/python -m pytest -q -m "not slow"

lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/speed.py
	$(BIN)/python bench/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

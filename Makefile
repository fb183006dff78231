# The README's two commands: `make demo` and `make test`. Both create .venv when it
# is missing and install what they need into it; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch and torchvision are pinned to the newest releases these machines install;
# the package itself only asks for lower bounds.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo demo-classify test test-fast lint docs clean postgres

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH) || $(PIP) install -q torch torchvision
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/liandan demo

demo-classify: $(VENV)/.installed
	$(VENV)/bin/liandan demo --task classify

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# tests/test_tune_postgres.py starts a PostgreSQL server of its own from Debian's
# package (as the `postgres` user the package creates: the server refuses root)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# pytest exits 5 when it collected no test: treated as a failure, not a pass.
test: lint postgres
	$(VENV)/bin/pytest -q -m "slow or not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Day-to-day loop: skips the slow end-to-end cases (CI runs everything).
test-fast: $(VENV)/.installed-test
	$(VENV)/bin/pytest -q -x

docs: $(VENV)/.installed
	$(PY) -m liandan.config_reference > docs/config.md

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

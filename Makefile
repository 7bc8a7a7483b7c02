# The two commands: `make demo` runs it, `make test` tests it. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench bench-api soak fuzz clean

# The dashboard's browser test drives Debian's Chromium through Playwright (which must
# never download a browser of its own): installed here when missing and apt-get is at
# hand. Not fatal: without it, that one test is skipped and says why.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the dashboard's browser test"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		{ $$sudo apt-get update -qq && \
		  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium: the dashboard's browser test will be skipped"; \
	fi
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pgqueue service tests benchmarks examples migrations scripts
	$(VENV)/bin/ruff format --check pgqueue service tests benchmarks examples migrations scripts
	$(VENV)/bin/mypy pgqueue service

test: lint
	$(PY) scripts/run_tests.py

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

bench-api: $(VENV)/.installed
	$(PY) benchmarks/api.py

# The fault-injection scenarios at ten times the jobs (PGQUEUE_SOAK=N for another scale).
soak: $(VENV)/.installed
	PGQUEUE_SOAK=$${PGQUEUE_SOAK:-10} $(VENV)/bin/pytest -p no:cacheprovider -v -s \
		tests/test_faults.py tests/test_db_restart.py

# schemathesis against the live API for PGQUEUE_FUZZ_SECONDS (default 300), every check on
# (scripts/fuzz_api.py; the test suite runs a bounded one).
fuzz: $(VENV)/.installed
	$(PY) scripts/fuzz_api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output

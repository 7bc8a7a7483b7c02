# The two commands: `make demo` runs it, `make test` tests it. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench bench-api soak soak-scale soak-horizon docker-test fuzz clean

# The dashboard's browser test drives Debian's Chromium through Playwright (which must
# never download a browser of its own): installed here when missing and apt-get is at
# hand. Not fatal: without it, that one test is skipped and says why. The same for
# Debian's faketime (libfaketime), which the clock-skew test of tests/test_hosts.py uses.
# And Debian's prometheus, for its promtool (tests/test_alert_rules.py).
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
	@if ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		echo "installing faketime (apt-get) for the clock-skew test of several hosts"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		{ $$sudo apt-get update -qq && \
		  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null; } \
		|| echo "could not install faketime: the clock-skew test will be skipped"; \
	fi
	@if [ ! -x /usr/bin/promtool ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing prometheus (apt-get) for promtool, which checks the alert rules"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		{ $$sudo apt-get update -qq && \
		  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
		|| echo "could not install prometheus: the alert rules' promtool tests will be skipped"; \
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

# Flat cost as the work grows: 10 million no-op jobs through 2 workers with retention on,
# figures per million (PGQUEUE_SOAK_JOBS=N for another count).
soak-scale: $(VENV)/.installed
	$(PY) -m benchmarks.soak_scale --jobs $${PGQUEUE_SOAK_JOBS:-10000000}

# A REPEATABLE READ transaction held open 10 minutes against 2,000 jobs/s: throughput, claim
# p99, server CPU and dead tuples before, during and after (benchmarks/long_transaction.py).
soak-horizon: $(VENV)/.installed
	$(PY) -m benchmarks.long_transaction

# The container image built and run for real (tests/test_docker_image.py): a Docker engine
# of the test's own and, where no registry is reachable, a Debian stand-in for the official
# base image. Needs root; skipped, saying why, elsewhere. Part of `make test` too.
docker-test: $(VENV)/.installed
	$(VENV)/bin/pytest -p no:cacheprovider -v tests/test_docker_files.py tests/test_docker_image.py

# schemathesis against the live API for PGQUEUE_FUZZ_SECONDS (default 300), every check on
# (scripts/fuzz_api.py; the test suite runs a bounded one).
fuzz: $(VENV)/.installed
	$(PY) scripts/fuzz_api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output

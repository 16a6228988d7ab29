# The README's commands. Everything runs from the project's own virtualenv in .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
SERVER ?= uvicorn
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run serve test test-sqlite test-postgres browser codex claude-code lint format bench \
	clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Local development runs with DJANGO_DEBUG (tracebacks in the admin, the key in var/secret_key);
# production sets DJANGO_DEBUG=false and DJANGO_SECRET_KEY (docs/deploy.md).
run serve: export DJANGO_DEBUG ?= true

# The demo upstream (config.toml's "demo" model: canned answers, no key) runs beside the gateway
# on 127.0.0.1:8001 (the port config.toml names) and stops with it.
DEMO_DOWN := The demo upstream did not start (is 127.0.0.1:8001 taken?): the demo model \
answers 502 until it does; see var/demo-upstream.log.
run: install var/secret_key
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_demo --host $(HOST):$(PORT)
	@$(BIN)/python tests/fake_upstream.py --port 8001 > var/demo-upstream.log 2>&1 & \
		demo=$$!; trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
		(sleep 3; grep -q READY var/demo-upstream.log || echo "$(DEMO_DOWN)" >&2) & \
		$(MAKE) --no-print-directory serve

# MALLOC_ARENA_MAX=2: glibc otherwise gives the ledger writer thread malloc arenas of its own,
# which hold ~20 MB more resident memory per worker for nothing (bench/README.md).
# TOLLGATE_LOG_FORMAT=json: uvicorn's own lines are JSON from its first (the supervisor of
# several workers never imports the app, which makes the workers' JSON).
# SERVER=uvicorn (the default, as in deploy/tollgate.service) on Tollgate's loop: uvloop, accepting
# every waiting connection at each turn (a fair share of them when workers share the socket), so a
# saturated worker is fair to callers that connect (tollgate/uvicorn_loop.py; #17's figures in
# bench/README.md); or SERVER=granian. Each has a JSON log config of its own.
serve: install var/secret_key
ifeq ($(SERVER),granian)
	MALLOC_ARENA_MAX=2 $(BIN)/granian --interface asgi --host $(HOST) --port $(PORT) --workers $(WORKERS) \
		--loop uvloop --no-access-log \
		$(if $(filter json,$(TOLLGATE_LOG_FORMAT)),--log-config tollgate/granian_json_logging.json) \
		tollgate.asgi:granian_application
else
	MALLOC_ARENA_MAX=2 $(BIN)/uvicorn tollgate.asgi:application --host $(HOST) --port $(PORT) --workers $(WORKERS) \
		--loop tollgate.uvicorn_loop:new_event_loop --http httptools --no-access-log \
		$(if $(filter json,$(TOLLGATE_LOG_FORMAT)),--log-config tollgate/uvicorn_json_logging.json)
endif

# Django's SECRET_KEY for local use (admin sessions), made once; production sets DJANGO_SECRET_KEY.
var/secret_key:
	@mkdir -p var
	@umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

# The whole suite on SQLite, then again on PostgreSQL + Redis. Locally a missing service skips
# its run; with CI=true it fails. The end-to-end gateways run under uvicorn (what the unit and
# make serve run) on SQLite, under granian (the other supported server) on PostgreSQL.
test: test-sqlite test-postgres

test-sqlite: install browser codex claude-code
	@if $(BIN)/python tests/services.py redis; then \
		echo "== the suite on SQLite (+ Redis for the shared-counter tests), the gateways under uvicorn"; \
		REDIS_URL=$(REDIS_TEST_URL) $(BIN)/pytest; \
	else \
		echo "== the suite on SQLite (Redis unreachable: its tests skip, or fail with CI=true)"; \
		$(BIN)/pytest; \
	fi

test-postgres: install browser codex claude-code
	@if $(BIN)/python tests/services.py postgres redis; then \
		echo "== the suite on PostgreSQL + Redis, the gateways under granian"; \
		DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) TOLLGATE_TEST_SERVER=granian $(BIN)/pytest; \
	elif [ "$$CI" = "true" ]; then \
		echo "PostgreSQL or Redis is not reachable, and CI=true: failing." >&2; exit 1; \
	else \
		echo "PostgreSQL or Redis is not reachable: skipping the PostgreSQL run (CI=true fails)."; \
	fi

# Headless Chromium for the browser test (tests/test_browser_reports.py), from Debian's packages:
# Playwright drives it, never downloads a browser of its own. Locally a failed install only skips
# that test; with CI=true the test fails.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "== installing chromium"; \
		$(SUDO) apt-get install -y chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; } \
		|| [ "$$CI" != "true" ]; \
	}

# Codex CLI for the Codex end-to-end test (tests/test_e2e_codex.py): the version pinned in
# tests/support/codex.py, installed with npm into var/node/ once. Locally a failed install only
# skips that test; with CI=true it stops make here (and fails the test when run alone).
codex: install
	@$(BIN)/python tests/support/codex.py || [ "$$CI" != "true" ]

# Claude Code for its end-to-end test (tests/test_e2e_claude_code.py), the same way: the version
# pinned in tests/support/claude_code.py, into var/node/ once; locally a failed install skips the
# test, with CI=true it stops make here.
claude-code: install
	@$(BIN)/python tests/support/claude_code.py || [ "$$CI" != "true" ]

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tollgate gateway providers

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The load benchmark (bench/README.md), e.g. make bench BENCH_ARGS="--workers 2 --rounds 1".
BENCH_ARGS ?=
# Where gateway-redis counts (when Redis answers on 127.0.0.1:6379): a database of its own.
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/14
# Where gateway-postgres gets a database of its own, dropped after the run (when PostgreSQL
# answers on 127.0.0.1:5432): the server of this URL.
BENCH_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/postgres
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

bench: install
	@command -v wrk >/dev/null 2>&1 || { \
		echo "== installing wrk"; \
		$(SUDO) apt-get install -y wrk || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }; \
	}
	@given=""; \
		if $(BIN)/python tests/services.py redis; then given="--redis-url $(BENCH_REDIS_URL)"; fi; \
		if $(BIN)/python tests/services.py postgres; then \
			given="$$given --postgres-url $(BENCH_POSTGRES_URL)"; fi; \
		echo "$(BIN)/python bench/run.py $$given $(BENCH_ARGS)"; \
		$(BIN)/python bench/run.py $$given $(BENCH_ARGS)
	$(BIN)/python -m bench.routing

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

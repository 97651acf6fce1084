# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install run test test-unit lint format services test-tools bench compose-up compose-down clean

install: $(VENV)/.installed

# Reinstalled when the dependencies change. The client (client/) and the service in one pip
# command, so that the service's `medevents-client` requirement resolves to the local one.
$(VENV)/.installed: setup.cfg pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./client -e '.[test,dev]'
	touch $@

# The service with its embedded defaults: RabbitMQ started (or installed) when AMQP_URL names
# no other broker, the embedded MongoDB when MONGODB_URL is unset, demo patients written.
# Unsigned packages (SIGNATURE_MODE=decode) unless told otherwise: see README, "Signatures".
run: install services
	SIGNATURE_MODE=$${SIGNATURE_MODE:-decode} $(BIN)/medevents run

# RabbitMQ on 127.0.0.1:5672, for `run` and the tests (which start their own MongoDB).
services:
	scripts/ensure-rabbitmq

# OS packages only the tests use (Debian's docker-compose, for the compose file's checks).
test-tools:
	scripts/ensure-test-tools

# Processing and polling against bare baselines measured in the same run, cost per call, 60 s
# of load, the dashboard with 1,000 and 100,000 jobs, then memory over a million polls (about
# 12 minutes): about 25 minutes in all.
bench: install services
	$(BIN)/python bench/consumer_throughput.py
	$(BIN)/python bench/polling.py --seconds 10
	$(BIN)/python bench/costs.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/memory.py

# pytest exits 5 when it collected no test: that is a failed suite, not a pass.
test: install services test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# The fast tests alone: pure logic, no broker, no MongoDB (seconds).
test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test-unit: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# The production-like stack of docker-compose.yml, where a Docker engine runs (not on the
# development machines). JWT_SECRET and RABBITMQ_PASSWORD must be set.
# Compose v2 waits for the health checks (--wait); v1 (Debian's docker-compose) starts in order.
compose-up:
	if docker compose version >/dev/null 2>&1; then \
	  docker compose --project-name medevents up --detach --build --wait; \
	else docker-compose --project-name medevents up --detach --build; fi

compose-down:
	if docker compose version >/dev/null 2>&1; then docker compose --project-name medevents down; \
	else docker-compose --project-name medevents down; fi

# ruff, then the import rules of setup.cfg's [importlinter] (README, "Architecture").
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache *.egg-info

# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install lock lock-upgrade lock-check lowest image run test test-unit lint format services test-tools bench bench-quick bench-tools compose-up compose-down clean

install: $(VENV)/.installed

# Everything from the hashed lock (requirements/dev.txt: the service's dependencies, the embedded
# MongoDB stand-in, the test and development tools, setuptools), then the service and the client
# (client/) themselves, editable and without dependencies: `pip check` proves the lock holds all
# they need. Reinstalled when the lock or the metadata changes.
$(VENV)/.installed: pyproject.toml client/pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e ./client -e .
	$(BIN)/python -m pip check
	touch $@

# The lock files (scripts/lock), recomputed from pyproject.toml and requirements/*.in, keeping
# every pin that still satisfies them (`make lock-upgrade`: the newest versions allowed).
# uv alone is installed first where no virtualenv is yet (the lock is what it is made from).
$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv

lock: $(BIN)/uv
	UV=$(BIN)/uv scripts/lock

lock-upgrade: $(BIN)/uv
	UV=$(BIN)/uv scripts/lock --upgrade

# Fails when a lock no longer matches pyproject.toml or requirements/*.in (run `make lock`).
lock-check: $(BIN)/uv
	UV=$(BIN)/uv scripts/lock --check

# Once, the lowest versions pyproject.toml allows for each direct dependency (transitive ones
# the newest), in a virtualenv of their own: the unit tests prove the floors (CI runs it).
lowest: install
	rm -rf .venv-lowest
	$(BIN)/uv venv --quiet --python $(PYTHON) .venv-lowest
	$(BIN)/uv pip install --quiet --python .venv-lowest/bin/python --resolution lowest-direct \
		-e ./client -e '.[test,dev]'
	.venv-lowest/bin/python -m pytest tests/unit -q $(PYTEST_ARGS); \
	status=$$?; if [ $$status -eq 5 ]; then echo "make lowest: no tests" >&2; exit 1; fi; exit $$status

# The service with its embedded defaults: RabbitMQ started (or installed) when AMQP_URL names
# no other broker, the embedded MongoDB when MONGODB_URL is unset, demo patients written.
# Unsigned packages (SIGNATURE_MODE=decode) unless told otherwise: see docs/operations.md, "Signatures".
run: install services
	SIGNATURE_MODE=$${SIGNATURE_MODE:-decode} $(BIN)/medevents run

# RabbitMQ on 127.0.0.1:5672, for `run` and the tests (which start their own MongoDB).
services:
	scripts/ensure-rabbitmq

# OS packages only the tests use (Debian's docker-compose, for the compose file's checks).
test-tools:
	scripts/ensure-test-tools
	scripts/ensure-image-tools

# The container image (Dockerfile) with buildah, no Docker engine needed. BASE_IMAGE (the
# official Python image by default) and IMAGE (medevents:VERSION) may be set.
image:
	scripts/build-image

# Every benchmark (docs/benchmarks.md): each prints its figures and its ratios to baselines
# measured in the same run, interleaved. HTTP load comes from wrk (scripts/ensure-bench-tools).
# `make bench` takes long (about an hour); `make bench-quick` runs a short version of each, in
# under 5 minutes. BENCH_ARGS is passed to every script.
BENCHMARKS := consumer_throughput polling costs load peers webhooks scale dashboard memory
bench: install services bench-tools
	set -e; for name in $(BENCHMARKS); do \
	  echo "== bench/$$name.py"; $(BIN)/python bench/$$name.py $(BENCH_ARGS); done

bench-quick:
	$(MAKE) bench BENCH_ARGS="--quick $(BENCH_ARGS)"

bench-tools:
	scripts/ensure-bench-tools

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

# ruff; the import rules (pyproject.toml's [tool.importlinter], docs/architecture.md); mypy;
# deptry (every import declared in pyproject.toml, nothing declared unused); hadolint on the
# Dockerfile; the lock files up to date with pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/deptry .
	cd client && ../$(BIN)/deptry src
	$(BIN)/hadolint Dockerfile
	UV=$(BIN)/uv scripts/lock --check

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .venv-lowest .data .pytest_cache .ruff_cache .mypy_cache *.egg-info

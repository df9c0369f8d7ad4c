# The two commands of the README: `make demo` (the fleet end to end) and `make test`.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: setup demo down test test-slow bench lint docs

setup:
	@scripts/setup.sh

demo: setup
	@scripts/services.sh rabbitmq
	@.venv/bin/python -m funasr_fleet.devstack demo

down:
	@.venv/bin/python -m funasr_fleet.devstack down

# Each run gets its own RabbitMQ vhost (unless FLEET_TEST_AMQP_URL names a broker), removed afterwards.
test: setup lint
	@scripts/services.sh rabbitmq
	@.venv/bin/python -m funasr_fleet dev tiny-models .cache/tiny-models >/dev/null
	@rc=0; vhost=; \
	 if [ -z "$${FLEET_TEST_AMQP_URL:-}" ]; then \
	   vhost=fleet-test-$$$$; scripts/services.sh vhost-add $$vhost; \
	   export FLEET_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/$$vhost; \
	 fi; \
	 .venv/bin/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	 if [ -n "$$vhost" ]; then scripts/services.sh vhost-del $$vhost; fi; \
	 if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test-slow: setup
	@scripts/services.sh rabbitmq
	@.venv/bin/python -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	@scripts/services.sh rabbitmq
	@.venv/bin/python -m benchmarks --quick --json bench-results/bench.json

# Lint (ruff), format check (ruff format) and static types (mypy); configured in pyproject.toml.
lint: setup
	@echo "lint: ruff check, ruff format --check, mypy"
	@.venv/bin/ruff check funasr_fleet tests benchmarks
	@.venv/bin/ruff format --check funasr_fleet tests benchmarks
	@.venv/bin/mypy funasr_fleet

# The documentation site (pages under docs/, nav in mkdocs.yml) into site/; --strict: a broken link fails.
docs: setup
	@NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --site-dir site

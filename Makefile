# headrace: every set-up step a fresh machine needs lives here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPOSITORY ?= model_repository
PYTEST_ARGS ?=
COMPOSE := docker compose -f infra/docker-compose.yml
KAFKA_BOOTSTRAP ?= localhost:9092

.PHONY: install demo test test-slow test-unit bench lint format clean protos compose-up compose-down test-kafka

install: $(STAMP)

# Re-runs only when pyproject.toml changes. torch goes first and alone, so that
# the local CPU build is chosen before anything else can ask for torch.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	sh infra/get-promtool.sh $(BIN)
	touch $(STAMP)

demo: install
	$(BIN)/headrace train --model lenet5 --dataset digits --repository $(REPOSITORY)
	$(BIN)/headrace models list --repository $(REPOSITORY)
	$(BIN)/python -m headrace.demo --repository $(REPOSITORY) --model lenet5-digits

# Two pytest workers, one test file each at a time: most integration tests wait on servers,
# brokers and Ray, so two files in flight keep both cores busy (~12 min instead of ~25).
# Files go out in collection order (tests/conftest.py puts the ones that take minutes
# first), not xdist's default of the files with the most tests first.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The tests marked slow: full training runs to an accuracy target (MNIST with the default
# settings, ~2.5 min), left out of `make test` to keep it within 15 minutes.
test-slow: install
	HEADRACE_SLOW_TESTS=1 $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The stack of infra/docker-compose.yml on Apache Kafka (needs Docker): Kafka on localhost:9092,
# gRPC on :8001, Prometheus on :9090, Grafana on :3000. README: "Run on real Kafka".
compose-up:
	$(COMPOSE) up -d --build --wait

compose-down:
	$(COMPOSE) down -v

# The whole suite against the compose stack's Apache Kafka instead of embedded brokers,
# including the tests only a real broker can run (tests/integration/test_real_kafka.py). The
# stack's own serve, stream workers and training agent are stopped first: they would consume
# the tests' records.
test-kafka: install
	$(COMPOSE) up -d --wait kafka
	$(COMPOSE) stop serve stream-worker training-agent
	HEADRACE_KAFKA_BOOTSTRAP=$(KAFKA_BOOTSTRAP) HEADRACE_KAFKA_RESTART="$(COMPOSE) restart kafka" \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.streaming
	$(BIN)/python -m benchmarks.distributed
	$(BIN)/python -m benchmarks.privacy
	$(BIN)/python -m benchmarks.robustness
	$(BIN)/python -m benchmarks.watermark
	$(BIN)/python -m benchmarks.tuning
	$(BIN)/python -m benchmarks.compression

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Regenerate the committed Python code from protos/*.proto (tests/unit/test_protos.py
# fails when it is stale).
protos: install
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/model_config.proto protos/grpc_service.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

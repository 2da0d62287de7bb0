# mdstream: every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast services services-down bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job: Kafka, a worker, the generated feed; bars and alerts printed live.
demo: $(STAMP)
	$(BIN)/mdstream demo --seconds $(or $(DEMO_SECONDS),60)

## The whole suite against real Kafka, PostgreSQL and Redis (started by the tests if needed).
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

## Only the tests that need no service.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not services"

services: $(STAMP)
	$(BIN)/mdstream services up --all

services-down: $(STAMP)
	$(BIN)/mdstream services down

bench: $(STAMP)
	$(BIN)/python -m benchmarks.pipeline

lint: $(STAMP)
	$(BIN)/ruff check .

clean: services-down
	rm -rf $(VENV) .run

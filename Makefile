# mdstream: every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The Quix Streams peer of benchmarks.compare has an environment of its own: quixstreams 3.x
# requires confluent-kafka < 2.13, mdstream pins 2.16.
QUIX   := .venv-quix/.installed

.PHONY: install demo test test-fast services services-down bench bench-pipeline lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

$(QUIX): benchmarks/peers/requirements-quix.txt
	$(PYTHON) -m venv .venv-quix
	.venv-quix/bin/pip install -q -r benchmarks/peers/requirements-quix.txt
	touch $(QUIX)

install: $(STAMP)

## The main job: Kafka, a worker, the generated feed; bars and alerts printed live.
demo: $(STAMP)
	$(BIN)/mdstream demo --seconds $(or $(DEMO_SECONDS),60)

## The whole suite against real Kafka, PostgreSQL and Redis (started by the tests if needed).
test: $(STAMP) $(QUIX)
	$(BIN)/python -m pytest -q -rs

## Only the tests that need no service.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not services"

services: $(STAMP)
	$(BIN)/mdstream services up --all

services-down: $(STAMP)
	$(BIN)/mdstream services down

## mdstream beside Kafka's perf tools, bare confluent-kafka, faust and Quix Streams, one feed.
bench: $(STAMP) $(QUIX)
	$(BIN)/python -m benchmarks.compare --include-mdstream

## The pipeline alone, in phases: throughput, tick → bar latency, ceilings.
bench-pipeline: $(STAMP)
	$(BIN)/python -m benchmarks.pipeline

lint: $(STAMP)
	$(BIN)/ruff check .

clean: services-down
	rm -rf $(VENV) .venv-quix .run

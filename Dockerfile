# poc-routing images, from the whole workspace (the server and the Envoy module share the
# placement crate). Build from the repository root:
#   docker build --target server -t poc-routing-server:latest .
#   docker build --target envoy  -t poc-routing-envoy:latest .
# docker-compose.yaml builds both the same way.

# --- toolchain with cargo-chef, shared by the two build stages
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /app

# --- the dependency recipe: changes only when Cargo.toml/Cargo.lock do
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- dependencies first (a cached layer), then our code: poc-server, the routing module and the
# example room service (app mode: docker-compose.app.yaml, minikube-app/)
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    --package poc-routing-server --package poc-routing-envoy-module \
    --package poc-routing-example-rooms
COPY . .
RUN cargo build --release --locked --package poc-routing-server --package poc-routing-envoy-module \
    --package poc-routing-example-rooms

# --- Envoy with the routing module. The module is built on Debian bookworm (glibc 2.36) and
# needs at most GLIBC_2.34 (e2e/tests/module.rs checks it), so it also loads in the official
# envoyproxy/envoy image (Ubuntu noble, glibc 2.39). envoy.yaml and lua/ are mounted at
# /etc/envoy (Compose volumes, Kubernetes ConfigMap). envoy-admin reaches the admin interface,
# which listens on the container's loopback only (the image has no curl).
FROM envoyproxy/envoy:v1.40.0 AS envoy
COPY --from=builder /app/target/release/libpoc_routing_envoy_module.so /usr/local/lib/envoy/
COPY scripts/envoy-admin /usr/local/bin/envoy-admin
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy
WORKDIR /etc/envoy
EXPOSE 10000

# --- the server: slim runtime, non-root (the default target: last in the file)
FROM debian:bookworm-slim AS server
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin poc
COPY --from=builder /app/target/release/poc-server /usr/local/bin/poc-server
# The example application of app mode; it runs only where a deployment starts it.
COPY --from=builder /app/target/release/poc-rooms /usr/local/bin/poc-rooms
USER 10001:10001
ENV PORT=8081 \
    LOG_FORMAT=json
EXPOSE 8081
HEALTHCHECK --interval=2s --timeout=2s --start-period=5s --retries=3 CMD ["poc-server", "healthcheck"]
ENTRYPOINT ["poc-server"]

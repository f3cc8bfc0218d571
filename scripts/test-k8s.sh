#!/usr/bin/env bash
# End-to-end test of the Kubernetes deployment on a real, single-node Kubernetes v1.20.2 cluster
# built from Debian's source package (`make test-k8s`; scripts/k8s/). Steps:
#   1. build or reuse the cluster binaries and images; start the cluster (scripts/k8s/cluster.sh)
#   2. apply minikube/ as README says, rendered by kubectl kustomize (server-side apply)
#   3. pods server-0, server-1 and Envoy Ready; poc-client verify --count 1000 through the
#      NodePort, 100% correct
#   4. kubectl delete pod server-<owner>: other clients never fail; its own clients are served
#      by the new pod once it is back (measured, with the failed joins meanwhile)
#   5. kubectl scale statefulset/server --replicas=K, 2 -> 3 -> 2, under steady /join load: 0
#      non-2xx during each step, then 1000 ids 100% correct
#   6. the Lua flow: minikube-lua/ applied the same way (Envoy's ConfigMap from envoy-lua.yaml),
#      Envoy rolled; verify 1000 ids, then step 5 again
# Always tears the cluster down (scripts/k8s/cluster.sh down), even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CLIENT=target/release/poc-client
API=http://127.0.0.1:8080
NS=poc-routing
WORK=target/k8s-test
mkdir -p "$WORK" target/bench/faults

step() { printf '\n=== %s  (%ss)\n' "$*" "$SECONDS"; }
KUBECTL=$(command -v kubectl || echo .venv/bin/kubectl)
kctl() { "$KUBECTL" --server "$API" -n "$NS" "$@"; }

# --- prerequisites: fail loudly, never skip
[ "$(id -u)" = 0 ] || fail "make test-k8s runs a kubelet and kube-proxy: run it as root"
docker info >/dev/null 2>&1 || fail "Docker is not reachable: the kubelet runs pods in Docker (dockershim)"
[ -x "$KUBECTL" ] || fail "kubectl is missing: make k8s-tools"
[ -x "$CLIENT" ] && [ -x target/release/poc-stack ] || fail "$CLIENT or poc-stack is missing: make build"

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "--- pods ---" >&2
    kctl get pods -o wide >&2 || true
    for f in target/k8s/*.log; do echo "--- $f (last 20 lines) ---" >&2; tail -n 20 "$f" >&2; done
  fi
  bash scripts/k8s/cluster.sh down || true
  echo "test exit code $rc, ${SECONDS}s"
  exit $rc
}

step "1. cluster binaries, images, cluster up"
bash scripts/k8s/build.sh
bash scripts/k8s/pause-image.sh
for target in server envoy; do
  docker image inspect "poc-routing-$target:latest" >/dev/null 2>&1 ||
    docker build --target "$target" -t "poc-routing-$target:latest" .
done
trap cleanup EXIT
bash scripts/k8s/cluster.sh up
NODE_IP=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1 | head -n 1)
URL=http://$NODE_IP:30080

step "2. apply minikube/ (kubectl kustomize | kubectl apply --server-side)"
"$KUBECTL" kustomize --load-restrictor LoadRestrictionsNone minikube/ |
  "$KUBECTL" --server "$API" apply --server-side -f -

step "3. pods Ready; verify 1000 ids through the NodePort ($URL)"
wait_for "statefulset/server rolled out" 180 kctl rollout status statefulset/server --timeout=5s
wait_for "deployment/envoy rolled out" 180 kctl rollout status deployment/envoy --timeout=5s
pods=$(kctl get pods -l app.kubernetes.io/name=poc-routing-server -o jsonpath='{.items[*].metadata.name}')
[ "$pods" = "server-0 server-1" ] || fail "the StatefulSet's pods" "server-0 server-1" "$pods"
wait_for "Envoy to answer on the NodePort" 60 curl -fsS "$URL/where?client_id=probe"
"$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify.json" ||
  fail "poc-client verify through the NodePort" "1000 correct" "$(cat "$WORK/verify.json")"
echo "1000/1000 correct through $URL"

step "4. kubectl delete pod: other clients never fail; its clients are served again by the new pod"
owned=$(curl -fsS "$URL/where?client_id=k8s-delete" | python3 -c 'import json,sys; print(json.load(sys.stdin)["index"])')
echo "client k8s-delete belongs to server-$owned"
victim=server-$owned
other=$(( 1 - owned ))
other_client=""
for i in $(seq 1 200); do
  idx=$(curl -fsS "$URL/where?client_id=k8s-other-$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["index"])')
  if [ "$idx" = "$other" ]; then other_client=k8s-other-$i; break; fi
done
[ -n "$other_client" ] || fail "no client of server-$other among 200 ids"
old_uid=$(kctl get pod "$victim" -o jsonpath='{.metadata.uid}')
# join ID: "<status> <instance>" of one join.
join() { curl -s -m 5 "$URL/join?client_id=$1" -w ' %{http_code}' | python3 -c '
import json, sys
text = sys.stdin.read().rsplit(" ", 1)
try: instance = json.loads(text[0]).get("instance")
except ValueError: instance = None
print(text[1], instance)'; }
deleted=$SECONDS
kctl delete pod "$victim" --wait=false >/dev/null
victim_failures=0
while :; do
  read -r code _ <<<"$(join "$other_client")"
  [ "$code" = 200 ] || fail "a client of server-$other failed while $victim was replaced" 200 "$code"
  read -r code instance <<<"$(join k8s-delete)"
  [ "$code" = 200 ] || victim_failures=$((victim_failures + 1))
  uid=$(kctl get pod "$victim" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
  if [ -n "$uid" ] && [ "$uid" != "$old_uid" ] && [ "$code" = 200 ] && [ "$instance" = "$owned" ]; then
    break
  fi
  [ $((SECONDS - deleted)) -lt 120 ] || fail "$victim's clients were not served by the new $victim within 120 s"
  sleep 0.2
done
echo "$victim replaced; its clients served by the new pod $((SECONDS - deleted)) s after kubectl delete pod; failed joins of its client meanwhile: $victim_failures; of other clients: 0"

# scale_to K: kubectl scale under steady /join load; 0 non-2xx, then 1000 ids 100% correct.
scale_to() {
  local k=$1
  "$CLIENT" load --url "$URL" --count 2000 --concurrency 16 --max-seconds 120 --json >"$WORK/load${TAG:-}-$k.json" &
  local load_pid=$! scaled
  sleep 1
  scaled=$SECONDS
  kctl scale statefulset/server --replicas="$k" >/dev/null
  wait_for "$k server pods Ready" 120 bash -c "[ \"\$(kubectl --server $API -n $NS get statefulset server -o jsonpath='{.status.readyReplicas}')\" = $k ] && [ \"\$(kubectl --server $API -n $NS get pods -l app.kubernetes.io/name=poc-routing-server --no-headers | wc -l)\" = $k ]"
  wait_for "every view to agree on $k members" 60 "$CLIENT" views --url "$URL" --expect "$k"
  local agreed=$((SECONDS - scaled))
  sleep 1.5
  kill -INT "$load_pid"
  wait "$load_pid" || true
  local summary failures
  summary=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("joins sent %d, non-2xx %d %s, previous-epoch joins %d" % (r["sent"], sum(r["non_2xx"].values()), dict(r["non_2xx"]), r["previous_epoch_joins"]))' "$WORK/load${TAG:-}-$k.json")
  echo "scale to $k: $summary; every view agreed ${agreed} s after kubectl scale"
  failures=$(python3 -c 'import json,sys; print(sum(json.load(open(sys.argv[1]))["non_2xx"].values()))' "$WORK/load${TAG:-}-$k.json")
  [ "$failures" = 0 ] || fail "joins failed while scaling to $k" "0 non-2xx" "$summary"
  "$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify${TAG:-}-$k.json" ||
    fail "poc-client verify after scaling to $k" "1000 correct" "$(cat "$WORK/verify${TAG:-}-$k.json")"
  echo "1000/1000 correct with $k servers"
}

step "5. kubectl -n $NS scale statefulset/server --replicas=K under steady /join load: 2 -> 3 -> 2"
scale_to 3
scale_to 2

step "6. the Lua flow: kubectl kustomize minikube-lua/ | kubectl apply; verify; 2 -> 3 -> 2 under load"
"$KUBECTL" kustomize --load-restrictor LoadRestrictionsNone minikube-lua/ |
  "$KUBECTL" --server "$API" apply --server-side -f -
wait_for "deployment/envoy rolled out with the Lua flow" 180 kctl rollout status deployment/envoy --timeout=5s
# Every Envoy pod left runs the Lua flow once none of the old ReplicaSet's pods is left.
wait_for "the module-flow Envoy pods to be gone" 120 bash -c "[ \"\$(kubectl --server $API -n $NS get pods -l app.kubernetes.io/name=poc-routing-envoy --no-headers | wc -l)\" = 2 ]"
wait_for "Envoy to answer on the NodePort" 60 curl -fsS "$URL/where?client_id=probe"
"$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify-lua.json" ||
  fail "poc-client verify through the NodePort, Lua flow" "1000 correct" "$(cat "$WORK/verify-lua.json")"
echo "1000/1000 correct through $URL in the Lua flow"
TAG=-lua
scale_to 3
scale_to 2

step "PASS: Kubernetes v1.20.2 cluster"

#!/usr/bin/env bash
# End-to-end test of the Kubernetes deployment on a real, single-node Kubernetes v1.20.2 cluster
# built from Debian's source package (`make test-k8s`; scripts/k8s/). Steps:
#   1. build or reuse the cluster binaries and images; start the cluster (scripts/k8s/cluster.sh)
#   2. apply minikube-app/ (minikube/ with the example room service in every server pod) as
#      README says, rendered by kubectl kustomize (server-side apply)
#   3. pods server-0, server-1 and Envoy Ready; poc-client verify --count 1000 through the
#      NodePort, 100% correct
#   4. kubectl delete pod server-<owner>: other clients never fail; its own clients are served
#      by the new pod once it is back (measured, with the failed joins meanwhile); then the
#      sessions' fault row: 200 sessions held while the owner's server container is killed
#      (docker kill: a crash), exactly its sessions drop, and all are back within 15 s of the
#      kubelet restarting it; then `poc-client audit` of 1000 ids joined before step 4: 0 lost,
#      every replica on its backup (the restarted server read its records back)
#   5. kubectl scale statefulset/server --replicas=K, 2 -> 3 -> 2, each step checked by
#      `poc-client scale-step` (the same check as the local stack's tests and Compose's): 0
#      non-2xx under steady load, every view agreeing, then 1000 ids 100% correct; and by
#      `poc-client audit` (every known id registered exactly once, at its owner); 200
#      WebSocket sessions held through Envoy meanwhile end all on their owner, with no close
#      but "moved"; the example route keyed by a header (/api/join, x-user-id) gets steady
#      joins too: 0 non-2xx during each step, 1000 ids on their owner after it
#   5b. a stranger pod with the servers' image, labels and DNS name (server-77) and a credential
#      of its own: it changes no view, forms none of its own, reads no client id (every instance
#      refuses its peer requests), and the members' ids stay correct
#   6. Envoy's admin interface: refused from the node on the pod's address, reachable through
#      kubectl port-forward; the probe listener answers only /ready; the probes pass
#   7. the Lua flow: minikube-lua/ applied the same way (Envoy's ConfigMap from envoy-lua.yaml),
#      Envoy rolled; verify 1000 ids, then step 5 again; 7b. a server container killed and
#      restarted by the kubelet: every known id audited (0 lost, replicas in place)
#   8. app mode throughout: minikube-app/ (and minikube-lua-app/ in step 7) run the example
#      room service as a second container of every server pod. After step 3, after the
#      deletion and the crash of step 4, after every scale step and after 7b, `poc-client
#      rooms` reads every room's history back complete on its owner, posts one more message to
#      each (on its owner), and reads them again; the audits above judge every registered id,
#      the rooms' records (which carry their histories) included: at the owner once, the
#      replica on the backup
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
# One Envoy pod's address: its operator listener (9903) has no Service, and pod addresses are
# reachable from the node.
envoy_pod_ip() {
  kctl get pods -l app.kubernetes.io/name=poc-routing-envoy --field-selector=status.phase=Running \
    -o jsonpath='{.items[0].status.podIP}'
}

# --- prerequisites: fail loudly, never skip
[ "$(id -u)" = 0 ] || fail "make test-k8s runs a kubelet and kube-proxy: run it as root"
docker info >/dev/null 2>&1 || fail "Docker is not reachable: the kubelet runs pods in Docker (dockershim)"
[ -x "$KUBECTL" ] || fail "kubectl is missing: make k8s-tools"
[ -x "$CLIENT" ] && [ -x target/release/poc-stack ] || fail "$CLIENT or poc-stack is missing: make build"

sessions_pid=
cleanup() {
  local rc=$?
  [ -z "$sessions_pid" ] || kill "$sessions_pid" 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    echo "--- pods ---" >&2
    kctl get pods -o wide >&2 || true
    # What the controllers and the kubelet did (pods deleted, recreated, killed, restarted).
    echo "--- events (last 40) ---" >&2
    kctl get events --sort-by=.lastTimestamp -o custom-columns=TIME:.lastTimestamp,KIND:.involvedObject.kind,NAME:.involvedObject.name,REASON:.reason,MESSAGE:.message 2>/dev/null | tail -n 40 >&2 || true
    for f in target/k8s/*.log; do echo "--- $f (last 20 lines) ---" >&2; tail -n 20 "$f" >&2; done
  fi
  bash scripts/k8s/cluster.sh down || true
  echo "test exit code $rc, ${SECONDS}s"
  exit $rc
}

step "1. cluster binaries, images, cluster up"
bash scripts/k8s/build.sh
bash scripts/k8s/pause-image.sh
# Always built (Docker's cache makes it quick when nothing changed): images left by an earlier
# checkout would test other code.
for target in server envoy; do
  docker build -q --target "$target" -t "poc-routing-$target:latest" . >/dev/null
done
trap cleanup EXIT
bash scripts/k8s/cluster.sh up
NODE_IP=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1 | head -n 1)
URL=http://$NODE_IP:30080
# The example affinity route envoy.yaml ships beside /join: /api/join, keyed by the x-user-id
# header (ids any header carries as they are).
HEADER_ROUTE=(--url "$URL" --route /api/join --key header:x-user-id --id-kind token)

step "2. apply minikube-app/ (minikube/ with the example room service beside each server; kubectl kustomize | kubectl apply --server-side) and the two Secrets"
"$KUBECTL" kustomize --load-restrictor LoadRestrictionsNone minikube-app/ |
  "$KUBECTL" --server "$API" apply --server-side -f -
# The deployment's secrets, as README says: made once, applied as Secrets (the pods wait for
# them), and re-applied the same way at each step of a rotation.
[ -f .secrets/peer/ca.pem ] || target/release/poc-server credential new .secrets
kctl create secret generic poc-routing-peer --from-file=.secrets/peer --dry-run=client -o yaml | kctl apply -f -
kctl create secret generic poc-routing-operator --from-file=.secrets/operator --dry-run=client -o yaml | kctl apply -f -

step "3. pods Ready; verify 1000 ids through the NodePort ($URL)"
wait_for "statefulset/server rolled out" 180 kctl rollout status statefulset/server --timeout=5s
wait_for "deployment/envoy rolled out" 180 kctl rollout status deployment/envoy --timeout=5s
pods=$(kctl get pods -l app.kubernetes.io/name=poc-routing-server -o jsonpath='{.items[*].metadata.name}')
[ "$pods" = "server-0 server-1" ] || fail "the StatefulSet's pods" "server-0 server-1" "$pods"
wait_for "Envoy to answer on the NodePort" 60 curl -fsS "$URL/where?client_id=probe"
# Ready pods are members at once, but Envoy's owners cluster learns a new pod's address at its
# next DNS refresh (every second): until then that owner's joins are refused with 503
# owner_unavailable (fail-closed). Wait until 50 joins reach their owners, then measure.
wait_for "Envoy to reach every owner" 30 "$CLIENT" verify --url "$URL" --count 50 --concurrency 4
"$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify.json" ||
  fail "poc-client verify through the NodePort" "1000 correct" "$(cat "$WORK/verify.json")"
echo "1000/1000 correct through $URL"
rooms_step two

step "4. kubectl delete pod: other clients never fail; its clients are served again by the new pod"
# Known ids, audited after this step and the crash of 4b: nothing lost, replicas in place.
seq 1 1000 | sed 's/^/crash-/' >"$WORK/crash-ids.txt"
"$CLIENT" verify --url "$URL" --ids "$WORK/crash-ids.txt" --concurrency 16 >"$WORK/crash-ids-joined.txt" ||
  fail "joining the known ids before the pod is deleted" "every join on its owner" "$(tail -n 5 "$WORK/crash-ids-joined.txt")"
owned=$("$CLIENT" where k8s-delete --url "$URL" --index)
echo "client k8s-delete belongs to server-$owned"
victim=server-$owned
other=$(( 1 - owned ))
other_client=""
for i in $(seq 1 200); do
  idx=$("$CLIENT" where "k8s-other-$i" --url "$URL" --index)
  if [ "$idx" = "$other" ]; then other_client=k8s-other-$i; break; fi
done
[ -n "$other_client" ] || fail "no client of server-$other among 200 ids"
old_uid=$(kctl get pod "$victim" -o jsonpath='{.metadata.uid}')
# join ID [EXPECTATION...]: "<status> <instance>" of one join (000 when no answer came within
# 5 s); exits 1 unless the answer meets the expectations (poc-client join-expect).
join() { "$CLIENT" join-expect "$1" --url "$URL" --timeout 5 "${@:2}"; }
deleted=$SECONDS
kctl delete pod "$victim" --wait=false >/dev/null
victim_failures=0
while :; do
  join "$other_client" --status 200 >"$WORK/join-other.txt" 2>&1 ||
    fail "a client of server-$other failed while $victim was replaced" 200 "$(cat "$WORK/join-other.txt")"
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

step "4b. WebSocket sessions through a crash of $victim's server container (docker kill; the kubelet restarts it): only its sessions drop, all back within 15 s of its restart"
wait_for "2 server pods Ready" 120 bash -c "[ \"\$(kubectl --server $API -n $NS get statefulset server -o jsonpath='{.status.readyReplicas}')\" = 2 ]"
progress="$WORK/fault-sessions.progress"
"$CLIENT" sessions --url "$URL" --count 200 --seconds 600 --json --progress-json >"$WORK/fault-sessions.json" 2>"$progress" &
sessions_pid=$!
wait_for "200 sessions up" 60 sessions_up_is "$progress" 200
# A crash, not a deletion: `kubectl delete pod` (even with --grace-period=0 --force) has the
# kubelet send SIGTERM, and the server then leaves as in a scale-down. The kubelet runs the
# containers in this machine's Docker (dockershim), so the container is killed there, and the
# kubelet restarts it in the same pod.
# The server container's status (the pod also runs the room service).
SERVER_STATUS='.status.containerStatuses[?(@.name=="server")]'
restarts() { kctl get pod "$victim" -o jsonpath="{$SERVER_STATUS.restartCount}"; }
# The running server container of $victim's pod as it is now, in Docker: by the pod's uid, so
# that a container of an earlier pod of that name is never taken for it.
server_container() {
  local uid containers
  uid=$(kctl get pod "$victim" -o jsonpath='{.metadata.uid}')
  containers=$(docker ps -q --filter "label=io.kubernetes.pod.uid=$uid" --filter "label=io.kubernetes.container.name=server")
  [ "$(wc -w <<<"$containers")" = 1 ] ||
    fail "the running server container of $victim (pod $uid) in Docker" "exactly one" "${containers:-none}"
  echo "$containers"
}
restarts_before=$(restarts)
container=$(server_container)
docker kill "$container" >/dev/null
# The clients see the kill only at their next ping (up to 1 s later, all at about the same
# moment: they opened together), and by then the kubelet may have restarted the container: the
# reconnects then succeed at once, and every session can be up again before the next progress
# line (every 200 ms) or the next look. So the drop is judged by the unexpected closes counted
# so far, which only grow, not by how many sessions are up at one moment, which can miss it.
wait_for "the killed owner's sessions to drop" 20 sessions_dropped "$progress"
restarted_running() {
  [ "$(restarts)" -gt "$restarts_before" ] &&
    [ -n "$(kctl get pod "$victim" -o jsonpath="{$SERVER_STATUS.state.running.startedAt}")" ]
}
wait_for "$victim's server container restarted" 120 restarted_running
wait_for "every session back up" 60 sessions_up_is "$progress" 200
kill -TERM "$sessions_pid"
wait "$sessions_pid" || true # exits 1: the dropped sessions are unexpected closes
sessions_pid=
# From the restarted container's start (whole seconds, so up to 1 s more than the real time).
started_at=$(kctl get pod "$victim" -o jsonpath="{$SERVER_STATUS.state.running.startedAt}")
sessions_fault_check "$WORK/fault-sessions.json" "$progress" "$(($(date -d "$started_at" +%s) * 1000))" "$owned" \
  target/bench/faults/sessions_restart_k8s.json 15000
# The pod deleted (it left, handing off), then its container killed (it came back empty and
# read its records back from their replicas): every known id at its owner, replicas in place.
"$CLIENT" audit --operator-url "http://$(envoy_pod_ip):9903" --ids "$WORK/crash-ids.txt" --within-seconds 30 >"$WORK/audit-crash.txt" 2>&1 ||
  fail "registrations after the pod's deletion and its container's crash" "0 lost, 0 duplicated, 0 misplaced, every replica on its backup" "$(cat "$WORK/audit-crash.txt")"
echo "registrations after the deletion and the crash: $(head -n 2 "$WORK/audit-crash.txt" | tr '\n' ' ')"
rooms_step delete-and-crash


# scale_to K: kubectl scale, checked by poc-client scale-step; 2000 more known ids joined before
# it, and every registration audited after it (poc-client audit: each known id registered once,
# at its owner, once the hand-offs settle).
: >"$WORK/known-ids.txt"
scale_to() {
  local k=$1 operator
  operator="http://$(envoy_pod_ip):9903"
  seq 1 2000 | sed "s/^/reg${TAG:-}-$k-/" >"$WORK/ids${TAG:-}-$k.txt"
  "$CLIENT" verify --url "$URL" --ids "$WORK/ids${TAG:-}-$k.txt" --concurrency 16 >"$WORK/ids${TAG:-}-$k-joined.txt" ||
    fail "joining the known ids before scaling to $k" "every join on its owner" "$(tail -n 5 "$WORK/ids${TAG:-}-$k-joined.txt")"
  cat "$WORK/ids${TAG:-}-$k.txt" >>"$WORK/known-ids.txt"
  # Steady joins on the example header-keyed route too (envoy.yaml's api_join), all the step.
  "$CLIENT" load "${HEADER_ROUTE[@]}" --count 1000 --concurrency 4 --max-seconds 600 >"$WORK/header-load${TAG:-}-$k.txt" 2>&1 &
  local header_load_pid=$!
  "$CLIENT" scale-step --url "$URL" --operator-url "http://$(envoy_pod_ip):9903" --expect "$k" \
    --within-seconds 120 -- "$KUBECTL" --server "$API" -n "$NS" scale statefulset/server --replicas="$k" \
    >"$WORK/scale${TAG:-}-$k.txt" 2>&1 ||
    fail "kubectl scale to $k" "0 non-2xx, every view agreeing, 1000 ids correct" "$(cat "$WORK/scale${TAG:-}-$k.txt")"
  echo "scale to $k: $(cat "$WORK/scale${TAG:-}-$k.txt")"
  kill -INT "$header_load_pid" 2>/dev/null || true
  wait "$header_load_pid" ||
    fail "joins on /api/join (header x-user-id) while scaling to $k" "0 non-2xx" "$(cat "$WORK/header-load${TAG:-}-$k.txt")"
  "$CLIENT" verify "${HEADER_ROUTE[@]}" --count 1000 --concurrency 16 >"$WORK/header-verify${TAG:-}-$k.txt" ||
    fail "1000 ids on /api/join (header x-user-id) after scaling to $k" "1000 correct" "$(cat "$WORK/header-verify${TAG:-}-$k.txt")"
  echo "  /api/join by x-user-id: $(head -n 1 "$WORK/header-load${TAG:-}-$k.txt" | cut -c1-100); $(grep -E '^  correct' "$WORK/header-verify${TAG:-}-$k.txt" | tr -s ' ')"
  "$CLIENT" audit --operator-url "$operator" --ids "$WORK/known-ids.txt" --within-seconds 30 >"$WORK/audit${TAG:-}-$k.txt" 2>&1 ||
    fail "registrations after scaling to $k" "0 lost, 0 duplicated, 0 misplaced, 0 pending" "$(cat "$WORK/audit${TAG:-}-$k.txt")"
  echo "  registrations: $(head -n 1 "$WORK/audit${TAG:-}-$k.txt"); $(grep -E '^settled' "$WORK/audit${TAG:-}-$k.txt")"
  wait_for "$k server pods Ready" 120 bash -c "[ \"\$(kubectl --server $API -n $NS get statefulset server -o jsonpath='{.status.readyReplicas}')\" = $k ] && [ \"\$(kubectl --server $API -n $NS get pods -l app.kubernetes.io/name=poc-routing-server --no-headers | wc -l)\" = $k ]"
  rooms_step "scale${TAG:-}-$k"
}

step "5. kubectl -n $NS scale statefulset/server --replicas=K under steady /join load: 2 -> 3 -> 2"
# sessions_start N / sessions_check: WebSocket sessions held through Envoy across the scale steps,
# each reconnected when its owner closes it as moved; afterwards every one must be up on its
# owner, with no close but "moved".
sessions_start() {
  "$CLIENT" sessions --url "$URL" --count "$1" --seconds 600 >"$WORK/sessions${TAG:-}.txt" 2>&1 &
  sessions_pid=$!
}
sessions_check() {
  kill -TERM "$sessions_pid" 2>/dev/null || true
  local ok=true
  wait "$sessions_pid" || ok=false
  sessions_pid=
  $ok || fail "WebSocket sessions through the scale steps" "every session on its owner, 0 unexpected closes" "$(cat "$WORK/sessions${TAG:-}.txt")"
  echo "sessions held through the steps:"
  sed 's/^/  /' "$WORK/sessions${TAG:-}.txt"
}

sessions_start 200
scale_to 3
scale_to 2
sessions_check

step "5b. a stranger pod: the servers' image, labels and DNS name (server-77), a credential of its own"
operator="http://$(envoy_pod_ip):9903"
rm -rf "$WORK/stranger" && target/release/poc-server credential new "$WORK/stranger" >/dev/null
kctl create secret generic stranger-peer --from-file="$WORK/stranger/peer" --dry-run=client -o yaml | kctl apply -f - >/dev/null
kctl create secret generic stranger-operator --from-file="$WORK/stranger/operator" --dry-run=client -o yaml | kctl apply -f - >/dev/null
members_before=$(member_lists "$operator")
# hostname + subdomain: the headless Service names it server-77 in its SRV records, as it does
# the StatefulSet's pods; the labels put it behind both Services, as a member would be.
kctl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: stranger
  labels:
    app.kubernetes.io/name: poc-routing-server
spec:
  hostname: server-77
  subdomain: server-headless
  automountServiceAccountToken: false
  containers:
  - name: server
    image: poc-routing-server:latest
    imagePullPolicy: IfNotPresent
    ports:
    - {name: http, containerPort: 8081}
    - {name: peer, containerPort: 7946}
    env:
    - {name: SERVICE_PREFIX, value: server}
    - {name: SERVICE_SUFFIX, value: .server-headless.poc-routing.svc.cluster.local}
    - {name: DISCOVERY, value: dns}
    - {name: DISCOVERY_NAME, value: _http._tcp.server-headless.poc-routing.svc.cluster.local}
    - {name: INDEX_MODE, value: hash}
    - {name: INDEX_BASE, value: "0"}
    - {name: PORT, value: "8081"}
    - {name: PEER_PORT, value: "7946"}
    - {name: PEER_CREDENTIAL_DIR, value: /run/secrets/peer}
    - {name: OPERATOR_TOKEN_FILE, value: /run/secrets/operator/token}
    volumeMounts:
    - {name: peer, mountPath: /run/secrets/peer, readOnly: true}
    - {name: operator, mountPath: /run/secrets/operator, readOnly: true}
  volumes:
  - {name: peer, secret: {secretName: stranger-peer}}
  - {name: operator, secret: {secretName: stranger-operator}}
YAML
stranger_running() { [ "$(kctl get pod stranger -o jsonpath='{.status.phase}')" = Running ]; }
wait_for "the stranger pod running" 60 stranger_running
stranger_ip=$(kctl get pod stranger -o jsonpath='{.status.podIP}')
# Named in DNS like a member: every server's round sees it (its peer list shows it).
named_in_dns() { { "$CLIENT" views --url "$operator" --json || true; } | grep -Eq '"instance": *77[,}[:space:]]'; }
wait_for "the servers to see server-77 in DNS" 30 named_in_dns
sleep 25 # as long as it took to become a member before the peer plane was authenticated
members_after=$(member_lists "$operator")
stranger_token=$(grep -v '^#' "$WORK/stranger/operator/token" | tail -n 1)
curl -fsS -H "Authorization: Bearer $stranger_token" "http://$stranger_ip:8081/registrations" >"$WORK/stranger-registrations.json" ||
  fail "the stranger's own /registrations (what it gathered over the peer plane)"
stranger_state=$(curl -fsS -H "Authorization: Bearer $stranger_token" "http://$stranger_ip:8081/placement" | grep -o '"state": *"[a-z]*"' | head -n 1)
kctl delete pod stranger --grace-period=0 --force >/dev/null 2>&1 || true
kctl delete secret stranger-peer stranger-operator >/dev/null 2>&1 || true
[ "$members_after" = "$members_before" ] || fail "the stranger changed a view" "$members_before" "$members_after"
grep -q '"joining"' <<<"$stranger_state" || fail "the stranger formed a view of its own" '"state":"joining"' "$stranger_state"
stranger_read_nothing "$WORK/stranger-registrations.json" 77
wait_for "the views to agree again without the stranger" 60 "$CLIENT" views --url "$operator" --expect 2
"$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify-stranger.json" ||
  fail "poc-client verify after the stranger" "1000 correct" "$(cat "$WORK/verify-stranger.json")"
echo "the stranger stayed out of every view (members $members_after), formed none of its own ($stranger_state); 1000/1000 correct after"

step "6. Envoy's admin interface: its own pod only; the probe listener answers only /ready"
pod=$(kctl get pods -l app.kubernetes.io/name=poc-routing-envoy -o jsonpath='{.items[0].metadata.name}')
pod_ip=$(envoy_pod_ip)
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$pod_ip:9901/server_info" || true)
[ "$code" = 000 ] || fail "the node must not reach Envoy's admin interface at $pod_ip:9901" "no connection" "HTTP $code"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 -X POST "http://$pod_ip:9901/quitquitquit" || true)
[ "$code" = 000 ] || fail "POST /quitquitquit must not reach Envoy's admin interface" "no connection" "HTTP $code"
curl -fsS "http://$pod_ip:9902/ready" >/dev/null || fail "the probe listener should answer /ready"
for path in /server_info /stats /quitquitquit; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$pod_ip:9902$path")
  [ "$code" = 404 ] || fail "the probe listener answers only /ready: POST $path" 404 "$code"
done
ready=$(kctl get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
[ "$ready" = True ] || fail "Envoy's pod should be Ready (its probes ask the probe listener)" True "$ready"
kctl port-forward "pod/$pod" 19901:9901 >"$WORK/port-forward.log" 2>&1 &
forward_pid=$!
wait_for "kubectl port-forward to Envoy's admin interface" 30 curl -fsS -o /dev/null http://127.0.0.1:19901/server_info
# To a variable first: with pipefail, `curl | grep -q` fails when grep stops reading early.
info=$(curl -fsS http://127.0.0.1:19901/server_info)
grep -q '"state": "LIVE"' <<<"$info" || fail "admin through port-forward" '"state": "LIVE"' "$(head -c 200 <<<"$info")"
kill "$forward_pid" 2>/dev/null || true
wait "$forward_pid" 2>/dev/null || true
curl -fsS "$URL/where?client_id=probe" >/dev/null || fail "Envoy should keep serving"
echo "admin refused at $pod_ip:9901 from the node, answered through kubectl port-forward; probe listener: /ready only"

step "7. the Lua flow: kubectl kustomize minikube-lua-app/ | kubectl apply; verify; 2 -> 3 -> 2 under load"
"$KUBECTL" kustomize --load-restrictor LoadRestrictionsNone minikube-lua-app/ |
  "$KUBECTL" --server "$API" apply --server-side -f -
wait_for "deployment/envoy rolled out with the Lua flow" 180 kctl rollout status deployment/envoy --timeout=5s
# Every Envoy pod left runs the Lua flow once none of the old ReplicaSet's pods is left.
wait_for "the module-flow Envoy pods to be gone" 120 bash -c "[ \"\$(kubectl --server $API -n $NS get pods -l app.kubernetes.io/name=poc-routing-envoy --no-headers | wc -l)\" = 2 ]"
wait_for "Envoy to answer on the NodePort" 60 curl -fsS "$URL/where?client_id=probe"
"$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify-lua.json" ||
  fail "poc-client verify through the NodePort, Lua flow" "1000 correct" "$(cat "$WORK/verify-lua.json")"
echo "1000/1000 correct through $URL in the Lua flow"
TAG=-lua
sessions_start 200
scale_to 3
scale_to 2
sessions_check

step "7b. the Lua flow: $victim's server container killed (a crash; the kubelet restarts it): every known id at its owner, replicas in place"
wait_for "2 server pods Ready" 120 bash -c "[ \"\$(kubectl --server $API -n $NS get statefulset server -o jsonpath='{.status.readyReplicas}')\" = 2 ]"
restarts_before=$(restarts)
container=$(server_container)
docker kill "$container" >/dev/null
wait_for "$victim's server container restarted" 120 restarted_running
"$CLIENT" audit --operator-url "http://$(envoy_pod_ip):9903" --ids "$WORK/known-ids.txt" --within-seconds 30 >"$WORK/audit-crash-lua.txt" 2>&1 ||
  fail "registrations after $victim's crash, Lua flow" "0 lost, 0 duplicated, 0 misplaced, every replica on its backup" "$(cat "$WORK/audit-crash-lua.txt")"
echo "registrations after the crash: $(head -n 2 "$WORK/audit-crash-lua.txt" | tr '\n' ' ')"
"$CLIENT" verify --url "$URL" --count 1000 --concurrency 16 --json >"$WORK/verify-lua-crash.json" ||
  fail "poc-client verify after the crash, Lua flow" "1000 correct" "$(cat "$WORK/verify-lua-crash.json")"
rooms_step crash-lua

step "PASS: Kubernetes v1.20.2 cluster"

#!/usr/bin/env bash
# End-to-end test of the Docker Compose stack, with the same docker-compose.yaml and Dockerfile a
# user runs (`make test-compose`). Steps:
#   1. 2 replicas: Envoy (the Dockerfile's envoy stage) loaded the routing module (ABI v0.2.0
#      matched) and holds the placement; poc-client verify --count 1000 is 100% correct
#   2. scale 2 -> 3 -> 2 -> 4 -> 1 -> 3 with the plain `docker compose up -d --scale server=K`,
#      each step checked by `poc-client scale-step` (the same check as the local stack's
#      tests): 0 non-2xx answers under steady load, every view agreeing, 1000 ids correct
#      after it; and no surviving container re-created. Before each step 2000 more known ids
#      are joined; after it, `poc-client audit` finds every known id registered exactly once,
#      at its owner (registrations are handed off), and reports how long that took to settle;
#      meanwhile `poc-client sessions` holds 300 WebSocket sessions through Envoy, which must
#      end the sequence all on their owner with no close but "moved"; and the example route
#      keyed by a header (/api/join, x-user-id) gets steady joins too: 0 non-2xx during each
#      step, 1000 ids on their owner after it
#   3. docker kill one replica: only its clients fail, each with 503 owner_unavailable JSON
#   4. docker start it (on a new IP): its clients are served again within 5 s, Envoy untouched;
#      after 3 kill/start cycles `poc-client audit` finds every known id at its owner and its
#      replica on its backup (the restarted owner read its records back); then the sessions' fault row: 300 sessions held while it is killed and started again,
#      exactly its sessions drop (the others are not closed), and all are back within 6 s of
#      docker start
#   5. /where answers the same from every replica
#   6. no client id in any server's log at the default level (the join is served by its owner)
#   6b. a stranger container (the server image, the servers' environment and DNS names, a
#      credential of its own) never becomes a member, changes no view and reads no client id
#   7. Envoy's admin interface answers only inside its own container (`envoy-admin`); from
#      another container, admin paths are refused on every port (POST /quitquitquit too) and
#      Envoy keeps serving; the probe listener answers only /ready (the host's
#      localhost:9901/ready); the operator listener answers on the host's loopback only; the
#      public listener serves no internal path
#   8. app mode throughout: every server runs the example room service beside it
#      (docker-compose.app.yaml). After step 1, after every scale step and after the kill/start
#      cycles, `poc-client rooms` reads every room's history back complete on its owner, posts
#      one more message to each (on its owner), and reads them again; the audits above judge
#      every registered id, the rooms' records (which carry their histories) included: at
#      the owner once, the replica on the backup, nowhere else
# Always tears down (down -v); dumps `compose logs` when a step fails.
#
# FLOW=lua runs it all with route A switched to the Lua flow (envoy-lua.yaml, mounted through
# ENVOY_YAML, as README says); the default is the flow envoy.yaml ships (the module flow).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CLIENT=target/release/poc-client
URL=http://127.0.0.1:10000
# The probe listener (GET /ready only), as the original design's README asks it.
PROBE=http://127.0.0.1:9901
OPERATOR=http://127.0.0.1:9903
NETWORK=poc-routing_default
FLOW=${FLOW:-}
WORK=target/compose-test${FLOW:+-$FLOW}
mkdir -p "$WORK" target/bench/faults

step() { printf '\n=== %s  (%ss)\n' "$*" "$SECONDS"; }

# App mode: the example room service beside every server (step 8), with every other step.
export COMPOSE_FILE=docker-compose.yaml:docker-compose.app.yaml

# --- prerequisites: fail loudly, never skip
docker info >/dev/null 2>&1 || fail "Docker is not reachable: install Docker Engine and start it (dockerd)"
docker compose version >/dev/null 2>&1 || fail "docker compose (v2) is missing: run scripts/install-compose.sh"
for image in debian:bookworm-slim rust:1.95-slim-bookworm envoyproxy/envoy:v1.40.0; do
  docker image inspect "$image" >/dev/null 2>&1 ||
    fail "image $image is missing and no registry is reachable: run scripts/build-base-images.sh (make images)"
done
[ -x "$CLIENT" ] || fail "$CLIENT is missing: run make build"
[ -x target/release/poc-server ] || fail "target/release/poc-server is missing: run make build"
case "$FLOW" in
  "" | module) ;;
  lua)
    export ENVOY_YAML="$PWD/envoy-lua.yaml"
    echo "route A runs the Lua flow ($ENVOY_YAML)"
    ;;
  *) fail "FLOW=$FLOW: it accepts module or lua (or nothing: as envoy.yaml ships, the module flow)" ;;
esac

placeholders=()
sessions_pid=
cleanup() {
  local rc=$?
  # The sessions client, if a failed step left it running; step 6b's stranger container (not
  # part of the Compose project: `down` would leave it, and it would hold up the next cold start).
  [ -z "$sessions_pid" ] || kill "$sessions_pid" 2>/dev/null || true
  docker rm -f poc-routing-server-77 >/dev/null 2>&1 || true
  if [ $rc -ne 0 ] && [ -f "$WORK/sessions.txt" ]; then
    echo "--- poc-client sessions ($WORK/sessions.txt) ---" >&2
    tail -n 5 "$WORK/sessions.txt" >&2 || true
  fi
  if [ $rc -ne 0 ]; then
    echo "--- docker compose logs (last 60 lines per container) ---" >&2
    docker compose logs --no-color --tail 60 >&2 || true
  fi
  [ ${#placeholders[@]} -eq 0 ] || docker rm -f "${placeholders[@]}" >/dev/null 2>&1 || true
  docker compose down -v --remove-orphans >/dev/null 2>&1 || true
  echo "compose stack removed (down -v); test exit code $rc, ${SECONDS}s"
  exit $rc
}
trap cleanup EXIT

# Envoy's admin interface, from inside its own container (it listens on loopback only).
admin() { docker compose exec -T envoy envoy-admin "$@"; }
healthy_servers() { admin /clusters | grep -c '^servers::.*::health_flags::healthy$' || true; }
healthy_servers_are() { [ "$(healthy_servers)" = "$1" ]; }
# The routing module holds a placement of exactly $1 members (it fetches /placement whichever
# flow route A runs).
module_members_are() {
  [ "$(admin "/stats?filter=^dynamicmodulescustom\.placement_members\$")" = "dynamicmodulescustom.placement_members: $1" ]
}
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$1"; }
# The running server containers, by name (poc-routing-server-<n>), sorted by number.
servers() { docker compose ps --format '{{.Name}}' server | sort -t- -k4 -n; }
number_of() { echo "${1##*-}"; }
# A command in another container on the Compose network (the server image has bash, which is
# all this needs).
neighbour() {
  docker run --rm --network "$NETWORK" --entrypoint bash poc-routing-server:latest -c "$1" 2>/dev/null
}
# The example affinity route envoy.yaml ships beside /join: /api/join, keyed by the x-user-id
# header (ids any header carries as they are).
HEADER_ROUTE=(--url "$URL" --route /api/join --key header:x-user-id --id-kind token)
# verify N FILE [extra args]: poc-client verify through Envoy, JSON report in FILE.
verify() {
  local count=$1 out=$2
  shift 2
  "$CLIENT" verify --url "$URL" --count "$count" --concurrency 16 --json "$@" >"$out" || true
}
# verify_all N NAME: poc-client verify through Envoy; fails unless every id is on its owner
# (the client's exit code says so).
verify_all() {
  "$CLIENT" verify --url "$URL" --count "$1" --concurrency 16 >"$WORK/$2.txt" ||
    fail "not every join landed on its owner ($WORK/$2.txt)" "$1 correct" "$(cat "$WORK/$2.txt")"
  grep -E "^  correct|RESULT" "$WORK/$2.txt"
}

step "1. docker compose up -d --build --scale server=2"
docker rm -f poc-routing-server-77 >/dev/null 2>&1 || true
docker compose down -v --remove-orphans >/dev/null 2>&1 || true
# The deployment's secrets (docker-compose.yaml mounts them), made once as README says.
[ -f .secrets/peer/ca.pem ] || target/release/poc-server credential new .secrets
TOKEN=$(grep -v '^#' .secrets/operator/token | tail -n 1)
docker compose up -d --build --scale server=2 --wait --wait-timeout 300
wait_for "Envoy's servers cluster to hold 2 healthy servers" 30 healthy_servers_are 2
# To a file first: with pipefail, `logs | grep -q` fails when grep stops reading early.
docker compose logs envoy >"$WORK/envoy.log" 2>&1
grep -q "Dynamic module ABI version v0.2.0 matched" "$WORK/envoy.log" ||
  fail "Envoy did not load the routing module" "Dynamic module ABI version v0.2.0 matched" "$(grep -i dynamic "$WORK/envoy.log" | tail -n 5)"
wait_for "the routing module to hold 2 members" 10 module_members_are 2
verify_all 1000 two
"$CLIENT" verify "${HEADER_ROUTE[@]}" --count 1000 --concurrency 16 >"$WORK/header-two.txt" ||
  fail "1000 ids on /api/join (header x-user-id)" "1000 correct" "$(cat "$WORK/header-two.txt")"
rooms_step two

step "2. scale 2 -> 3 -> 2 -> 4 -> 1 -> 3 under steady /join load: docker compose up -d --scale server=K"
# WebSocket sessions held through Envoy for the whole sequence, each reconnected when its owner
# closes it as moved.
"$CLIENT" sessions --url "$URL" --count 300 --seconds 600 >"$WORK/sessions.txt" 2>&1 &
sessions_pid=$!
: >"$WORK/known-ids.txt"
n=0
for k in 3 2 4 1 3; do
  n=$((n + 1))
  before=$(servers | tr '\n' ' ')
  ids_before=$(docker compose ps -q server | sort)
  # The servers' logs during the step, kept even for the containers the step removes.
  docker compose logs --follow --no-color --since "$(date -u +%Y-%m-%dT%H:%M:%SZ)" server >"$WORK/step-$n-to-$k.log" 2>&1 &
  logs_pid=$!
  # 2000 more known ids, joined (so registered) before the step.
  seq 1 2000 | sed "s/^/reg-$n-/" >"$WORK/ids-$n.txt"
  "$CLIENT" verify --url "$URL" --ids "$WORK/ids-$n.txt" --concurrency 16 >"$WORK/ids-$n-joined.txt" ||
    fail "joining the known ids before step $n" "every join on its owner" "$(tail -n 5 "$WORK/ids-$n-joined.txt")"
  cat "$WORK/ids-$n.txt" >>"$WORK/known-ids.txt"
  ok=true
  # Steady joins on the example header-keyed route too (envoy.yaml's api_join), all the step.
  "$CLIENT" load "${HEADER_ROUTE[@]}" --count 1000 --concurrency 4 --max-seconds 300 >"$WORK/header-load-$n.txt" 2>&1 &
  header_load_pid=$!
  "$CLIENT" scale-step --url "$URL" --operator-url "$OPERATOR" --expect "$k" -- \
    docker compose up -d --scale server=$k --wait --wait-timeout 60 >"$WORK/step-$n-to-$k.txt" 2>&1 || ok=false
  kill "$logs_pid" 2>/dev/null || true
  wait "$logs_pid" 2>/dev/null || true
  kill -INT "$header_load_pid" 2>/dev/null || true
  wait "$header_load_pid" ||
    fail "joins on /api/join (header x-user-id) while scaling to $k" "0 non-2xx" "$(cat "$WORK/header-load-$n.txt")"
  "$CLIENT" verify "${HEADER_ROUTE[@]}" --count 1000 --concurrency 16 >"$WORK/header-verify-$n.txt" ||
    fail "1000 ids on /api/join (header x-user-id) after scaling to $k" "1000 correct" "$(cat "$WORK/header-verify-$n.txt")"
  echo "  /api/join by x-user-id: $(head -n 1 "$WORK/header-load-$n.txt" | cut -c1-100); $(grep -E '^  correct' "$WORK/header-verify-$n.txt" | tr -s ' ')"
  if ! $ok; then
    echo "--- the servers' view changes and refusals during the step ($WORK/step-$n-to-$k.log) ---" >&2
    grep -E 'epoch changed|misdirected|"member"|leaving' "$WORK/step-$n-to-$k.log" | tail -n 80 >&2 || true
    fail "scaling to $k" "0 non-2xx, every view agreeing, 1000 ids correct" "$(cat "$WORK/step-$n-to-$k.txt")"
  fi
  after=$(servers | tr '\n' ' ')
  echo "scale to $k: [$before] -> [$after]: $(cat "$WORK/step-$n-to-$k.txt")"
  "$CLIENT" audit --operator-url "$OPERATOR" --ids "$WORK/known-ids.txt" --within-seconds 15 >"$WORK/audit-$n.txt" 2>&1 ||
    fail "registrations after scaling to $k" "0 lost, 0 duplicated, 0 misplaced, 0 pending" "$(cat "$WORK/audit-$n.txt")"
  echo "  registrations: $(head -n 1 "$WORK/audit-$n.txt"); $(grep -E '^settled' "$WORK/audit-$n.txt")"
  rooms_step "step-$n-to-$k"
  # The plain --scale command re-creates no surviving server: scaling up keeps every
  # container, scaling down only removes some.
  ids_after=$(docker compose ps -q server | sort)
  if [ "$(wc -l <<<"$ids_after")" -ge "$(wc -l <<<"$ids_before")" ]; then
    changed=$(comm -23 <(echo "$ids_before") <(echo "$ids_after"))
  else
    changed=$(comm -13 <(echo "$ids_before") <(echo "$ids_after"))
  fi
  [ -z "$changed" ] || fail "scaling to $k re-created a running server" "the surviving containers kept" "$changed"
done
# The sessions, after the five steps: every one up on its owner, none ended but by a moved close.
kill -TERM "$sessions_pid" 2>/dev/null || true
sessions_ok=true
wait "$sessions_pid" || sessions_ok=false
sessions_pid=
$sessions_ok || fail "WebSocket sessions through the scaling steps" "every session on its owner, 0 unexpected closes" "$(cat "$WORK/sessions.txt")"
echo "sessions held through the steps:"
sed 's/^/  /' "$WORK/sessions.txt"
"$CLIENT" views --url "$OPERATOR" --expect 3
mapfile -t running < <(servers)
[ "${#running[@]}" = 3 ] || fail "3 servers should run after the scaling steps" 3 "${#running[@]}"
victim=${running[1]}
victim_n=$(number_of "$victim")

step "3. docker kill $victim: only its clients fail"
old_ip=$(ip_of "$victim")
docker kill "$victim" >/dev/null
wait_for "Envoy's servers cluster to drop the killed server" 30 healthy_servers_are 2
verify 1000 "$WORK/killed.json" --seed 7 --results
# Every id the killed server owns refused with 503 owner_unavailable, every other one served by
# its owner (and enough of its ids to tell).
"$CLIENT" results expect-down "$WORK/killed.json" --instance "$victim_n" --at-least 100
# One of its clients whose id goes into a URL as it is, for the curl checks of step 4.
client=$("$CLIENT" results pick "$WORK/killed.json" --owner "$victim_n" --plain) ||
  fail "an id of ASCII letters and digits owned by $victim in $WORK/killed.json"
"$CLIENT" join-expect "$client" --url "$URL" --error owner_unavailable --owner "$victim:8081" --body >"$WORK/owner-down.txt" 2>&1 ||
  fail "the owner's clients should get owner_unavailable JSON" "{\"error\":\"owner_unavailable\",\"owner\":\"$victim:8081\",...}" "$(cat "$WORK/owner-down.txt")"
cat "$WORK/owner-down.txt"

step "4. docker start $victim (new IP), served again within 5 s; then 2 more kill/start cycles"
samples=()
for round in 1 2 3; do
  if [ "$round" -gt 1 ]; then
    docker kill "$victim" >/dev/null
    wait_for "the killed owner's client to get 503" 30 sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' '$URL/join?client_id=$client')\" = 503 ]"
  fi
  # Hold the freed address, as a busy network would, so that the restart really gets a new one.
  placeholders+=("$(docker run -d --network "$NETWORK" --entrypoint sleep debian:bookworm-slim 300)")
  # The clock starts before `docker start`, so the time includes the container's own start.
  started=$SECONDS
  start_ns=$(date +%s%N)
  docker start "$victim" >/dev/null
  new_ip=$(ip_of "$victim")
  [ "$new_ip" != "$old_ip" ] || fail "the restarted server kept its address" "a new IP" "$new_ip"
  echo "$victim: $old_ip -> $new_ip"
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/join?client_id=$client")" = 200 ]; do
    [ $((SECONDS - started)) -lt 15 ] || fail "the restarted owner was not reached within 15 s"
    sleep 0.1
  done
  elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
  [ "$elapsed_ms" -le 5000 ] || fail "the restarted owner should be served within 5 s" "<= 5000 ms" "$elapsed_ms ms"
  echo "served again ${elapsed_ms} ms after docker start (Envoy not restarted)"
  samples+=("$elapsed_ms")
  old_ip=$new_ip
done
mkdir -p target/bench/faults
worst=$(printf '%s\n' "${samples[@]}" | sort -n | tail -n 1)
figures=target/bench/faults/restart_recovery_compose${FLOW:+_$FLOW}.json
printf '{"fault": "restart_recovery_compose%s", "figures": {"served_again_after_docker_start_ms": [%s], "worst_ms": %s}}\n' \
  "${FLOW:+_$FLOW}" "$(IFS=,; echo "${samples[*]}")" "$worst" >"$figures"
echo "restart recovery on Compose: ${samples[*]} ms, worst $worst ms ($figures)"
wait_for "Envoy's servers cluster to hold 3 healthy servers" 30 healthy_servers_are 3
verify_all 1000 restarted
# Three crashes of an owner, each restarted empty: it reads its records back from their
# replicas, so every known id is still registered at its owner, with its replica.
"$CLIENT" audit --operator-url "$OPERATOR" --ids "$WORK/known-ids.txt" --within-seconds 30 >"$WORK/audit-restarted.txt" 2>&1 ||
  fail "registrations after 3 kill/start cycles of $victim" "0 lost, 0 duplicated, 0 misplaced, every replica on its backup" "$(cat "$WORK/audit-restarted.txt")"
echo "registrations after the kill/start cycles: $(head -n 2 "$WORK/audit-restarted.txt" | tr '\n' ' ')"
# The rooms the killed owner held came back with its records: every history complete.
rooms_step kill-start-cycles

step "4b. WebSocket sessions through docker kill and docker start of $victim: only its sessions drop, all back within 6 s of docker start"
# 300 sessions, their progress written every 200 ms as JSON lines (unix_ms, up, ...).
progress="$WORK/fault-sessions.progress"
"$CLIENT" sessions --url "$URL" --count 300 --seconds 600 --json --progress-json >"$WORK/fault-sessions.json" 2>"$progress" &
sessions_pid=$!
wait_for "300 sessions up" 60 sessions_up_is "$progress" 300
docker kill "$victim" >/dev/null
wait_for "the killed owner's sessions to drop" 10 sessions_up_below "$progress" 300
# Down for a while: its clients' reconnects are refused meanwhile.
sleep 3
start_ms=$(date +%s%3N)
docker start "$victim" >/dev/null
wait_for "every session back up" 30 sessions_up_is "$progress" 300
kill -TERM "$sessions_pid"
wait "$sessions_pid" || true # exits 1: the dropped sessions are unexpected closes
sessions_pid=
# 6 s: a restarted owner is served within 5 s of docker start (step 4), and a client whose
# reconnect was refused tries again within 1 s.
sessions_fault_check "$WORK/fault-sessions.json" "$progress" "$start_ms" "$victim_n" \
  "target/bench/faults/sessions_restart_compose${FLOW:+_$FLOW}.json" 6000
wait_for "Envoy's servers cluster to hold 3 healthy servers" 30 healthy_servers_are 3

step "5. /where answers the same from every replica"
ids=(123 alice "Zoë" "a b&c=d" 日本語 00042 "x%y+z")
for c in "${running[@]}"; do
  ip=$(ip_of "$c")
  for id in "${ids[@]}"; do
    "$CLIENT" where "$id" --url "http://$ip:8081"
  done >"$WORK/where-$c.txt"
done
for c in "${running[@]:1}"; do
  cmp -s "$WORK/where-${running[0]}.txt" "$WORK/where-$c.txt" ||
    fail "$c answers /where differently" "$(cat "$WORK/where-${running[0]}.txt")" "$(cat "$WORK/where-$c.txt")"
done
head -n 3 "$WORK/where-${running[0]}.txt"

step "6. no client id in any server's log at the default level"
id="log-check-$RANDOM$RANDOM"
# "<status> <instance>" of the join.
joined=$("$CLIENT" join-expect "$id" --url "$URL" --status 200 2>&1) ||
  fail "joining $id through Envoy" "HTTP 200" "$joined"
owner=${joined#* }
sleep 0.5 # the servers flush their logs every 100 ms
for c in "${running[@]}"; do
  docker logs "$c" >"$WORK/server.log" 2>&1
  if grep -qF "$id" "$WORK/server.log"; then
    fail "$c logged a client id at the default level" "no line with $id" "$(grep -F "$id" "$WORK/server.log" | head -n 2)"
  fi
done
echo "joined $id on instance $owner; no server logged the id"

step "6b. a stranger container with the servers' image, environment and names, but its own credential"
stranger_secrets=$(mktemp -d)
target/release/poc-server credential new "$stranger_secrets/s" >/dev/null
chmod 755 "$stranger_secrets"
members_before=$(member_lists "$OPERATOR")
docker run -d --rm --name poc-routing-server-77 --network "$NETWORK" --network-alias server \
  -v "$stranger_secrets/s/peer:/run/secrets/peer:ro" -v "$stranger_secrets/s/operator:/run/secrets/operator:ro" \
  -e SERVICE_PREFIX=poc-routing-server -e SERVICE_SUFFIX= -e DISCOVERY=dns -e DISCOVERY_NAME=server \
  -e INDEX_MODE="${INDEX_MODE:-hash}" -e INDEX_BASE=1 -e PORT=8081 \
  -e PEER_CREDENTIAL_DIR=/run/secrets/peer -e OPERATOR_TOKEN_FILE=/run/secrets/operator/token \
  poc-routing-server:latest >/dev/null
sleep 25 # as long as it took to become a member before the peer plane was authenticated
members_after=$(member_lists "$OPERATOR")
# What the stranger gathered over the peer plane, asked with its own operator token.
stranger_token=$(grep -v '^#' "$stranger_secrets/s/operator/token" | tail -n 1)
neighbour "exec 3<>/dev/tcp/poc-routing-server-77/8081 && printf 'GET /registrations HTTP/1.1\r\nHost: stranger\r\nAuthorization: Bearer $stranger_token\r\nConnection: close\r\n\r\n' >&3 && sed '1,/^\r\$/d' <&3" >"$WORK/stranger-registrations.json"
stranger_log=$(docker logs poc-routing-server-77 2>&1 | tail -n 5)
docker rm -f poc-routing-server-77 >/dev/null 2>&1 || true
rm -rf "$stranger_secrets"
[ "$members_after" = "$members_before" ] || fail "the stranger changed a view" "$members_before" "$members_after ($stranger_log)"
stranger_read_nothing "$WORK/stranger-registrations.json" 77
# Docker's DNS drops the removed container a moment later; the instances' next rounds follow.
wait_for "the views to agree again without the stranger" 20 "$CLIENT" views --url "$OPERATOR" --expect 3
verify_all 1000 after-stranger
# Without the operator's token, nobody on the network reads an id through Envoy's operator port.
answer=$(neighbour 'exec 3<>/dev/tcp/envoy/9903 && printf "GET /registrations HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n" >&3 && head -n 1 <&3 | cut -d" " -f2')
[ "$answer" = 401 ] || fail "envoy:9903/registrations without the token, from another container" 401 "$answer"
echo "the stranger stayed out of every view (members $members_after); /registrations without the token: 401"

step "7. Envoy's admin interface: its own container only; the probe, operator and public listeners"
# From the host: the original design's ready check reaches the probe listener, which answers
# nothing else; the operator listener serves the instance endpoints; the public one does not.
curl -fsS "$PROBE/ready" >/dev/null || fail "the host's localhost:9901/ready should answer 200"
code=$(curl -s -o /dev/null -w '%{http_code}' "$PROBE/server_info")
[ "$code" = 404 ] || fail "the probe listener answers only /ready" 404 "$code"
curl -fsS -H "Authorization: Bearer $TOKEN" "$OPERATOR/placement" >/dev/null || fail "the operator listener should serve /placement with the operator's token"
code=$(curl -s -o /dev/null -w '%{http_code}' "$OPERATOR/placement")
[ "$code" = 401 ] || fail "the operator listener without the token" 401 "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/clients")
[ "$code" = 404 ] || fail "the public listener must not serve /clients" 404 "$code"
host_ip=$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -n 1)
[ -n "$host_ip" ] || fail "this host has no non-loopback IPv4 address to test from"
for port in 9901 9903; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$host_ip:$port/ready" || true)
  [ "$code" = 000 ] || fail "port $port must not answer on $host_ip" "no connection" "HTTP $code"
done
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$host_ip:10000/where?client_id=1" || true)
[ "$code" = 200 ] || fail "the public listener should answer on $host_ip:10000 (control)" 200 "$code"
# From another container on the Compose network: the admin interface is not there on any port
# (connection refused on 9901; 404 on the others), even for POST /quitquitquit, and Envoy keeps
# serving. The server image has bash, which is all this needs.
ask='ask() { exec 3<>"/dev/tcp/envoy/$2" || { echo refused; return; }; printf "%s %s HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" "$1" "$3" >&3; head -n 1 <&3 | cut -d" " -f2; }'
answers=$(neighbour "$ask; for p in 9901 9902 9903 10000; do echo \"\$p \$(ask POST \$p /quitquitquit) \$(ask GET \$p /server_info)\"; done; echo \"ready \$(ask GET 9902 /ready)\"")
echo "$answers"
want=$'9901 refused refused\n9902 404 404\n9903 404 404\n10000 404 404\nready 200'
[ "$answers" = "$want" ] || fail "admin paths from another container" "$want" "$answers"
sleep 2
curl -fsS "$URL/where?client_id=1" >/dev/null || fail "Envoy should keep serving after the attempts"
curl -fsS "$PROBE/ready" >/dev/null || fail "Envoy should still be ready after the attempts"
# Operators reach the whole admin interface from inside Envoy's container.
# To a variable first: with pipefail, `admin | grep -q` fails when grep stops reading early.
info=$(admin /server_info)
grep -q '"state": "LIVE"' <<<"$info" || fail "envoy-admin /server_info inside the container" LIVE "${info:0:300}"
echo "admin: refused from other containers, answered inside Envoy's; probe: /ready only; operator: loopback only"

step "PASS: Docker Compose stack${FLOW:+, $FLOW flow}"

#!/usr/bin/env bash
# End-to-end test of the Docker Compose stack, with the same docker-compose.yaml and Dockerfile a
# user runs (`make test-compose`). Steps:
#   1. 2 replicas: poc-client verify --count 1000 is 100% correct
#   2. REPLICAS=3 --scale server=3: 100% again
#   3. docker kill one replica: only its clients fail, each with 503 owner_unavailable JSON
#   4. docker start it (on a new IP): its clients are served again within 5 s, Envoy untouched
#   5. /where answers the same from every replica
#   6. a join is logged by the owning container, and only by it
#   7. Envoy's admin port is not reachable from a non-loopback address of the host
# Always tears down (down -v); dumps `compose logs` when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENT=target/release/poc-client
URL=http://127.0.0.1:10000
ADMIN=http://127.0.0.1:9901
NETWORK=poc-routing_default
WORK=target/compose-test
mkdir -p "$WORK"
export REPLICAS=2

step() { printf '\n=== %s  (%ss)\n' "$*" "$SECONDS"; }
fail() {
  printf 'FAIL: %s\n' "$1" >&2
  [ $# -ge 3 ] && printf 'EXPECTED: %s\nRECEIVED: %s\n' "$2" "$3" >&2
  exit 1
}

# --- prerequisites: fail loudly, never skip
docker info >/dev/null 2>&1 || fail "Docker is not reachable: install Docker Engine and start it (dockerd)"
docker compose version >/dev/null 2>&1 || fail "docker compose (v2) is missing: run scripts/install-compose.sh"
for image in debian:bookworm-slim rust:1.95-slim-bookworm envoyproxy/envoy:v1.40.0; do
  docker image inspect "$image" >/dev/null 2>&1 ||
    fail "image $image is missing and no registry is reachable: run scripts/build-base-images.sh (make images)"
done
[ -x "$CLIENT" ] || fail "$CLIENT is missing: run make build"

placeholder=""
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "--- docker compose logs (last 60 lines per container) ---" >&2
    docker compose logs --no-color --tail 60 >&2 || true
  fi
  [ -n "$placeholder" ] && docker rm -f "$placeholder" >/dev/null 2>&1 || true
  docker compose down -v --remove-orphans >/dev/null 2>&1 || true
  echo "compose stack removed (down -v); test exit code $rc, ${SECONDS}s"
  exit $rc
}
trap cleanup EXIT

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

healthy_resolvers() { curl -fsS "$ADMIN/clusters" | grep -c '^resolver::.*::health_flags::healthy$' || true; }
resolvers_are() { [ "$(healthy_resolvers)" = "$1" ]; }
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$1"; }

# verify N FILE [extra args]: poc-client verify through Envoy, JSON report in FILE.
verify() {
  local count=$1 out=$2
  shift 2
  "$CLIENT" verify --url "$URL" --count "$count" --concurrency 16 --json "$@" >"$out" || true
}
report() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }
expect_all_correct() {
  local file=$1 count=$2
  local got
  got=$(report "$file" 'r["correct"], r["misrouted"], dict(r["errors"])')
  [ "$got" = "($count, 0, {})" ] || fail "not every join landed on its owner ($file)" "($count, 0, {})" "$got"
  echo "correct: $count/$count, joins per instance: $(report "$file" 'dict(r["joins_per_instance"])')"
}
small_verify_passes() { verify 50 "$WORK/probe.json" && [ "$(report "$WORK/probe.json" 'r["correct"]')" = 50 ]; }

step "1. docker compose up -d --build --scale server=2"
docker compose down -v --remove-orphans >/dev/null 2>&1 || true
docker compose up -d --build --scale server=2 --wait --wait-timeout 300
wait_for "Envoy's resolver cluster to hold 2 healthy servers" 30 resolvers_are 2
verify 1000 "$WORK/two.json"
expect_all_correct "$WORK/two.json" 1000

step "2. REPLICAS=3 docker compose up -d --scale server=3"
REPLICAS=3 docker compose up -d --scale server=3 --wait --wait-timeout 120
export REPLICAS=3
wait_for "Envoy's resolver cluster to hold 3 healthy servers" 30 resolvers_are 3
for n in 1 2 3; do
  replicas=$(docker exec "poc-routing-server-$n" printenv REPLICAS)
  [ "$replicas" = 3 ] || fail "poc-routing-server-$n was not re-created with the new count" 3 "$replicas"
done
wait_for "routing through the re-created servers" 20 small_verify_passes
verify 1000 "$WORK/three.json"
expect_all_correct "$WORK/three.json" 1000

step "3. docker kill poc-routing-server-2: only its clients fail"
old_ip=$(ip_of poc-routing-server-2)
docker kill poc-routing-server-2 >/dev/null
wait_for "Envoy's resolver cluster to drop the killed server" 30 resolvers_are 2
verify 1000 "$WORK/killed.json" --seed 7 --results
python3 - "$WORK/killed.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
down = bad = 0
for x in r["results"]:
    if x["owner"] == 2:
        down += 1
        if x.get("kind") != "join:http_503_owner_unavailable":
            bad += 1
            print(f"EXPECTED join:http_503_owner_unavailable for {x['client_id']!r}\nRECEIVED {x}")
    elif x["outcome"] != "correct" or x["instance"] != x["owner"]:
        bad += 1
        print(f"EXPECTED {x['client_id']!r} served by its owner {x['owner']}\nRECEIVED {x}")
if bad or down < 100:
    sys.exit(f"FAIL: {bad} wrong outcomes; {down} ids owned by the killed server")
print(f"{down} clients of the killed server got 503 owner_unavailable; the other {len(r['results']) - down} were served")
EOF
victim=$(python3 -c 'import json,sys; print(next(x["client_id"] for x in json.load(open(sys.argv[1]))["results"] if x["owner"] == 2 and x["client_id"].isascii() and x["client_id"].isalnum()))' "$WORK/killed.json")
body=$(curl -s "$URL/join?client_id=$victim")
python3 -c 'import json,sys; b=json.loads(sys.argv[1]); assert b["error"]=="owner_unavailable" and b["owner"]=="poc-routing-server-2:8081", b' "$body" ||
  fail "the owner's clients should get owner_unavailable JSON" '{"error":"owner_unavailable","owner":"poc-routing-server-2:8081",...}' "$body"
echo "$body"

step "4. docker start poc-routing-server-2 (new IP), served again within 5 s"
# Hold the freed address, as a busy network would, so that the restart really gets a new one.
placeholder=$(docker run -d --network "$NETWORK" --entrypoint sleep debian:bookworm-slim 300)
# The clock starts before `docker start`, so the time includes the container's own start.
started=$SECONDS
start_ns=$(date +%s%N)
docker start poc-routing-server-2 >/dev/null
new_ip=$(ip_of poc-routing-server-2)
[ "$new_ip" != "$old_ip" ] || fail "the restarted server kept its address" "a new IP" "$new_ip"
echo "poc-routing-server-2: $old_ip -> $new_ip"
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/join?client_id=$victim")" = 200 ]; do
  [ $((SECONDS - started)) -lt 15 ] || fail "the restarted owner was not reached within 15 s"
  sleep 0.1
done
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
[ "$elapsed_ms" -le 5000 ] || fail "the restarted owner should be served within 5 s" "<= 5000 ms" "$elapsed_ms ms"
echo "served again ${elapsed_ms} ms after docker start (Envoy not restarted)"
wait_for "Envoy's resolver cluster to hold 3 healthy servers" 30 resolvers_are 3
verify 1000 "$WORK/restarted.json"
expect_all_correct "$WORK/restarted.json" 1000

step "5. /where answers the same from every replica"
ids=(123 alice "Zoë" "a b&c=d" 日本語 00042 "x%y+z")
for n in 1 2 3; do
  ip=$(ip_of "poc-routing-server-$n")
  for id in "${ids[@]}"; do
    enc=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote_plus(sys.argv[1]))' "$id")
    curl -fsS "http://$ip:8081/where?client_id=$enc"
    echo
  done >"$WORK/where-$n.txt"
done
for n in 2 3; do
  cmp -s "$WORK/where-1.txt" "$WORK/where-$n.txt" ||
    fail "replica $n answers /where differently" "$(cat "$WORK/where-1.txt")" "$(cat "$WORK/where-$n.txt")"
done
head -n 3 "$WORK/where-1.txt"

step "6. the join is logged by the owning container, and only by it"
id="log-check-$RANDOM$RANDOM"
answer=$("$CLIENT" join "$id" --url "$URL")
owner=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["instance"])' "$answer")
for n in 1 2 3; do
  if docker logs "poc-routing-server-$n" 2>&1 | grep -F "\"client_id\":\"$id\"" | grep -q 'client joined'; then
    [ "$n" = "$owner" ] || fail "poc-routing-server-$n logged a join it does not own" "only poc-routing-server-$owner" "poc-routing-server-$n"
  else
    [ "$n" != "$owner" ] || fail "the owner did not log the join" "a 'client joined' line for $id in poc-routing-server-$n" "none"
  fi
done
echo "joined $id on instance $owner; logged by poc-routing-server-$owner only"

step "7. Envoy's admin port: host loopback only"
curl -fsS "$ADMIN/ready" >/dev/null || fail "admin should answer on 127.0.0.1:9901"
host_ip=$(hostname -I | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -n 1)
[ -n "$host_ip" ] || fail "this host has no non-loopback IPv4 address to test from"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$host_ip:9901/ready" || true)
[ "$code" = 000 ] || fail "admin must not answer on $host_ip:9901" "no connection" "HTTP $code"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$host_ip:10000/where?client_id=1" || true)
[ "$code" = 200 ] || fail "the listener should answer on $host_ip:10000 (control)" 200 "$code"
echo "admin refused on $host_ip:9901, listener answers on $host_ip:10000"

step "PASS: Docker Compose stack"

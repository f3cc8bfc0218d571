# Shared by the test scripts (sourced): a failure says what was expected and what came, and
# waiting polls a condition instead of sleeping a fixed time.

# fail MESSAGE [EXPECTED RECEIVED]
fail() {
  printf 'FAIL: %s\n' "$1" >&2
  [ $# -ge 3 ] && printf 'EXPECTED: %s\nRECEIVED: %s\n' "$2" "$3" >&2
  exit 1
}

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

# The WebSocket sessions' fault row (make test-compose, make test-k8s): `poc-client sessions
# --json --progress-json` holds sessions while an owner is killed and comes back.
#
# sessions_up PROGRESS: how many sessions are up, by the last line of the progress file.
sessions_up() {
  tail -n 1 "$1" 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.read() or "{}").get("up", -1))'
}
sessions_up_is() { [ "$(sessions_up "$1")" = "$2" ]; }
sessions_up_below() {
  local up
  up=$(sessions_up "$1")
  [ "$up" -ge 0 ] && [ "$up" -lt "$2" ]
}

# sessions_fault_check REPORT PROGRESS SINCE_MS VICTIM FIGURES LIMIT_MS: once the killed owner
# (instance VICTIM) is back and the client has stopped: every session is up on its owner; the
# sessions that broke were all on VICTIM, each broke once, and none was closed as "moved"; and
# all were up again within LIMIT_MS of SINCE_MS (unix ms, when the owner was started again).
# Writes the figures to FIGURES.
sessions_fault_check() {
  python3 - "$@" <<'EOF'
import json, sys
report_file, progress_file, since_ms, victim, figures, limit_ms = sys.argv[1:7]
since_ms, limit_ms = int(since_ms), int(limit_ms)
report = json.load(open(report_file))
n = report["sessions"]
dropped = report["unexpected_closes"]
lines = [json.loads(l) for l in open(progress_file) if l.startswith("{")]
# All up again: the first line with every session up after the first one, once all were up,
# with some down (the owner may be running again before its clients see their sessions break).
first_all_up = next((i for i, l in enumerate(lines) if l["up"] == n), len(lines))
first_down = next((i for i in range(first_all_up, len(lines)) if lines[i]["up"] < n), None)
back = next((l["unix_ms"] for l in lines[first_down:] if l["up"] == n), None) if first_down else None
expected = {"up": n, "on_owner": n, "moved": 0, "unexpected_by_instance": {victim: dropped},
            "most_unexpected_per_session": 1}
received = {k: report[k] for k in expected}
if received != expected or not 0 < dropped < n:
    sys.exit(f"FAIL: sessions through the kill of instance {victim}\nEXPECTED {expected} (0 < {dropped} < {n})\nRECEIVED {received}")
if back is None or back - since_ms > limit_ms:
    sys.exit(f"FAIL: the killed owner's sessions back\nEXPECTED within {limit_ms} ms\nRECEIVED {back and back - since_ms} ms")
back_ms = back - since_ms
name = figures.rsplit("/", 1)[-1].removesuffix(".json")
json.dump({"fault": name, "figures": {"sessions": n, "dropped": dropped,
           "refused_connects": report["refused_connects"], "back_ms": back_ms,
           "no_session_ms": report["no_session_ms"]}}, open(figures, "w"))
print(f"{dropped} of {n} sessions dropped with their owner (instance {victim}), each once, no other closed; all back {back_ms} ms after it was started "
      f"({report['refused_connects']} reconnects refused meanwhile; no session for at most {report['no_session_ms']['max']} ms)")
EOF
}

# A stranger beside the servers (make test-compose step 6b, make test-k8s step 5b): the server
# image with a credential of its own, named in DNS as an instance.
#
# member_lists OPERATOR_URL: the distinct member lists the instances hold, as one line. `views`
# exits 1 while a stranger is in DNS (an instance reports it as a peer with no card), so its
# status is not used here.
member_lists() {
  { "$CLIENT" views --url "$1" --json || true; } |
    python3 -c 'import json,sys; print(sorted(set(tuple(v["members"]) for v in json.load(sys.stdin) if v["members"] is not None)))'
}

# stranger_read_nothing REGISTRATIONS STRANGER: REGISTRATIONS is the stranger's own
# /registrations answer (asked with its own token: it gathers from every instance DNS names,
# over the peer plane). Fails if it holds a single id from another instance, or if no instance
# was asked; prints how many refused it.
stranger_read_nothing() {
  python3 - "$1" "$2" <<'PY'
import json, sys
answer, stranger = json.load(open(sys.argv[1])), int(sys.argv[2])
others = [i for i in answer["instances"] if i["instance"] != stranger]
read = sum(len(i["ids"]) for i in others)
refused = sum(1 for i in others if i.get("error"))
if not others or read or refused != len(others):
    sys.exit(f"FAIL: the stranger reads client ids over the peer plane\nEXPECTED every instance refusing it, 0 ids\nRECEIVED {len(others)} instances asked, {refused} refused, {read} ids")
print(f"the stranger asked {len(others)} instances for their registrations: all refused it, 0 ids read")
PY
}

# The example room service (app mode; make test-compose, make test-k8s), through Envoy at
# $URL with $CLIENT, reports in $WORK, the rounds posted so far in rooms_round.
# rooms_step NAME: every room's history read back complete on its owner, one more message
# posted to every room (each on its owner), and every history read back again.
rooms_round=0
rooms_step() {
  local rooms=(--url "$URL" --rooms 100)
  if [ "$rooms_round" -gt 0 ]; then
    "$CLIENT" rooms verify "${rooms[@]}" --rounds "$rooms_round" >"$WORK/rooms-$1-before.txt" ||
      fail "room histories after $1" "every room's $rooms_round messages on its owner" "$(cat "$WORK/rooms-$1-before.txt")"
  fi
  rooms_round=$((rooms_round + 1))
  "$CLIENT" rooms post "${rooms[@]}" --round "$rooms_round" >"$WORK/rooms-$1-post.txt" ||
    fail "posting message $rooms_round to every room after $1" "every post on the room's owner" "$(cat "$WORK/rooms-$1-post.txt")"
  "$CLIENT" rooms verify "${rooms[@]}" --rounds "$rooms_round" >"$WORK/rooms-$1.txt" ||
    fail "room histories after posting after $1" "every room's $rooms_round messages on its owner" "$(cat "$WORK/rooms-$1.txt")"
  echo "  rooms ($1): $(head -n 1 "$WORK/rooms-$1.txt")"
}

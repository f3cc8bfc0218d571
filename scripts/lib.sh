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
# --json --progress-json` holds sessions while an owner is killed and comes back; `poc-client
# sessions-progress` reads its progress file, `poc-client sessions-fault` judges the run.
#
# sessions_up_is PROGRESS N / sessions_up_below PROGRESS N: exactly N / fewer than N sessions are
# up, by the last line of the progress file (false while it has none).
sessions_up_is() { "$CLIENT" sessions-progress "$1" --up "$2"; }
sessions_up_below() { "$CLIENT" sessions-progress "$1" --up-below "$2"; }
# sessions_dropped PROGRESS: some session has closed unexpectedly since the run started. The
# count only grows, so a drop that is over before the next look (a restart faster than the
# polling) is still seen, as sessions_up_below would not.
sessions_dropped() { "$CLIENT" sessions-progress "$1" --unexpected-at-least 1; }

# sessions_fault_check REPORT PROGRESS SINCE_MS VICTIM FIGURES LIMIT_MS: once the killed owner
# (instance VICTIM) is back and the client has stopped: every session is up on its owner; the
# sessions that broke were all on VICTIM, each broke once, and none was closed as "moved"; and
# all were up again within LIMIT_MS of SINCE_MS (unix ms, when the owner was started again).
# Writes the figures to FIGURES. `poc-client sessions-fault` says what failed.
sessions_fault_check() {
  "$CLIENT" sessions-fault --report "$1" --progress "$2" --since-ms "$3" --instance "$4" \
    --figures "$5" --within-ms "$6" || exit 1
}

# A stranger beside the servers (make test-compose step 6b, make test-k8s step 5b): the server
# image with a credential of its own, named in DNS as an instance.
#
# member_lists OPERATOR_URL: the distinct member lists the instances hold, as one line. `views`
# exits 1 while a stranger is in DNS (an instance reports it as a peer with no card), so its
# status is not used here.
member_lists() {
  "$CLIENT" views --url "$1" --member-lists || true
}

# stranger_read_nothing REGISTRATIONS STRANGER: REGISTRATIONS is the stranger's own
# /registrations answer (asked with its own token: it gathers from every instance DNS names,
# over the peer plane). Fails if it holds a single id from another instance, or if no instance
# was asked; prints how many refused it.
stranger_read_nothing() {
  "$CLIENT" stranger-check "$1" --stranger "$2" || exit 1
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

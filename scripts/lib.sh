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

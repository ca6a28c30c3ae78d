#!/usr/bin/env bash
# The seed exchange end to end: stream_server and stream_client together, each
# of them against nc, and against the seed's own Go programs when go exists.
#
#   seed_exchange.sh STREAM_SERVER STREAM_CLIENT SEED_DIR
#
# The seed's programs use fixed ports (8080, 8081). To keep the test from
# colliding with anything on the machine, or with the TIME_WAIT its own
# previous run left on 8081, it re-runs itself in a fresh network namespace
# when it can (root, unshare); otherwise it uses the machine's loopback.
#
# A part that cannot run (no go, no nc, no network namespace) is a declared
# skip (tests/skip.sh), listed with its reason by scripts/dev; under CI=true
# it is a failure.
set -euo pipefail
server=$1 client=$2 seed=$3
# shellcheck source=skip.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/skip.sh"

if [[ -z "${SEED_EXCHANGE_NETNS:-}" ]] && command -v unshare >/dev/null &&
   unshare --net true 2>/dev/null; then
  exec env SEED_EXCHANGE_NETNS=1 unshare --net bash -c \
    'ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null; exec bash "$0" "$@"' "$0" "$@"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap 'rc=$?; cleanup; finish_status $rc' EXIT
failures=0
pass() { echo "ok: $1"; }
fail() { echo "FAIL: $1"; failures=$((failures + 1)); }

# Probing the port with a connection, which would use up the
# seed server's single accept. So instead wait until the server listens.
wait_listening() { # port
  for _ in $(seq 1 200); do
    if ss -ltn 2>/dev/null | grep -q "127.0.0.1:$1 "; then return 0; fi
    sleep 0.05
  done
  return 1
}

# Waits for a background server, killing it if it has not exited in 10 s
# (its client failed, say), so that a failure never hangs the test.
finish() { # pid
  for _ in $(seq 1 200); do
    kill -0 "$1" 2>/dev/null || { wait "$1"; return; }
    sleep 0.05
  done
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  return 1
}

check_server_output() { # name file
  local got
  # Chunks are printed one per line; together they are the message.
  got=$(grep -v -e '^$' -e '^Total size' "$2" | tr -d '\n')
  if [[ "$got" == "hello world!" ]] && grep -Eq '^Total size: +12$' "$2"; then
    pass "$1"
  else
    fail "$1"; echo "--- server output:"; cat "$2"; echo "---"
  fi
}

check_client_output() { # name file
  if [[ $(grep -cE '^written bytes: +6$' "$2") == 2 ]]; then
    pass "$1"
  else
    fail "$1"; echo "--- client output:"; cat "$2"; echo "---"
  fi
}

# 0. The seed's own Go programs, in both directions. The seed's client binds
#    127.0.0.1:8081 without SO_REUSEADDR, so its TIME_WAIT blocks that port
#    for everyone for a minute: it runs in a network namespace of its own.
if command -v go >/dev/null; then
  export GOCACHE="$work/gocache" GOPATH="$work/gopath" GO111MODULE=off HOME="${HOME:-$work}"
  go build -o "$work/seed_server" "$seed/server/main.go"
  go build -o "$work/seed_client" "$seed/client/main.go"

  if [[ -n "${SEED_EXCHANGE_NETNS:-}" ]]; then
    unshare --net bash -c 'ip link set lo up
      "$1" >"$3/s8" 2>&1 & pid=$!
      for _ in $(seq 1 200); do ss -ltn | grep -q "127.0.0.1:8080 " && break; sleep 0.05; done
      "$2" >"$3/c8" 2>&1; rc=$?
      for _ in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
      kill $pid 2>/dev/null; wait $pid && exit $rc' _ "$server" "$work/seed_client" "$work" ||
      fail "stream_server <- seed Go client: exit status"
    check_server_output "stream_server <- seed Go client" "$work/s8"
    check_client_output "seed Go client output" "$work/c8"
  else
    skip_part "seed Go client -> stream_server: needs a network namespace of its own (root and unshare --net)" ||
      fail "seed Go client -> stream_server did not run"
  fi

  "$work/seed_server" >"$work/s9" 2>&1 & pids+=($!)
  wait_listening 8080
  "$client" >"$work/c9" 2>&1 || fail "stream_client (seed server) exit status"
  finish "${pids[-1]}" || fail "seed server exit status"
  check_server_output "seed Go server <- stream_client" "$work/s9"
  check_client_output "stream_client -> seed Go server" "$work/c9"
else
  skip_part "seed Go programs: go is not installed (apt-get install golang-go)" ||
    fail "interop with the seed Go programs did not run"
fi

# 1. stream_server <- stream_client, on the seed's addresses.
"$server" >"$work/s1" 2>&1 & pids+=($!)
wait_listening 8080
"$client" >"$work/c1" 2>&1 || fail "stream_client exit status"
finish "${pids[-1]}" || fail "stream_server exit status"
check_server_output "stream_server <- stream_client" "$work/s1"
check_client_output "stream_client -> stream_server" "$work/c1"

# 2. Again at once: the client's port 8081 is in TIME_WAIT now and must be reusable.
"$server" >"$work/s2" 2>&1 & pids+=($!)
wait_listening 8080
"$client" >"$work/c2" 2>&1 || fail "stream_client rerun exit status"
finish "${pids[-1]}" || fail "stream_server rerun exit status"
check_server_output "rerun: stream_server <- stream_client" "$work/s2"

# 3. Other addresses through the options, IPv6 included when available.
"$server" --listen 127.0.0.1:9090 --backlog 4 >"$work/s3" 2>&1 & pids+=($!)
wait_listening 9090
"$client" --connect 127.0.0.1:9090 --no-bind >"$work/c3" 2>&1 || fail "client --connect exit status"
finish "${pids[-1]}" || fail "server --listen exit status"
check_server_output "options: --listen/--connect" "$work/s3"

# 4. Errors: connection refused, port in use, bad arguments; non-zero exits.
if "$client" --connect 127.0.0.1:9 --no-bind >"$work/c4" 2>&1; then
  fail "client to a closed port exits non-zero"
elif grep -q "Connection refused" "$work/c4"; then
  pass "client to a closed port: $(cat "$work/c4")"
else
  fail "client refused message"; cat "$work/c4"
fi
# A port held by another program (python3 is always there; nc may not be).
python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 9191)); s.listen(1); time.sleep(60)' & pids+=($!)
wait_listening 9191
if "$server" --listen 127.0.0.1:9191 >"$work/s5" 2>&1; then
  fail "server on a busy port exits non-zero"
elif grep -q "Address already in use" "$work/s5"; then
  pass "server on a busy port: $(cat "$work/s5")"
else
  fail "server busy-port message"; cat "$work/s5"
fi
kill "${pids[-1]}" 2>/dev/null || true
if "$server" --listen nonsense >/dev/null 2>&1; then fail "bad --listen accepted"; else pass "bad --listen refused"; fi
"$server" --help | grep -q -- "--listen" && pass "server --help" || fail "server --help"
"$client" --help | grep -q -- "--connect" && pass "client --help" || fail "client --help"

# 5. nc in both directions.
if command -v nc >/dev/null; then
  "$server" --listen 127.0.0.1:9292 >"$work/s6" 2>&1 & pids+=($!)
  wait_listening 9292
  printf 'hello world!' | nc -N 127.0.0.1 9292 || fail "nc client"
  finish "${pids[-1]}" || fail "stream_server (nc client) exit status"
  check_server_output "stream_server <- nc" "$work/s6"

  nc -l 127.0.0.1 9393 >"$work/n7" & pids+=($!)
  wait_listening 9393
  "$client" --connect 127.0.0.1:9393 --no-bind >"$work/c7" 2>&1 || fail "stream_client -> nc exit status"
  finish "${pids[-1]}" || true
  [[ $(cat "$work/n7") == "hello world!" ]] && pass "stream_client -> nc" ||
    { fail "stream_client -> nc"; cat "$work/n7"; }
else
  skip_part "stream_server/stream_client against nc: nc is not installed (apt-get install netcat-openbsd)" ||
    fail "interop with nc did not run"
fi

echo "seed exchange: $failures failure(s)"
[[ $failures == 0 ]]

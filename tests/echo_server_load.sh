#!/usr/bin/env bash
# examples/echo_server as users run it: thousands of connections at once with
# every byte checked, peers that reset or vanish, nothing printed per
# connection, and a clean exit on SIGTERM. 127.0.0.1 only, bounded in time.
# The same server also echoes UDP datagrams (--udp) and serves a Unix socket
# (--unix), whose file it removes on exit.
#
#   echo_server_load.sh ECHO_SERVER LOADGEN [SERVER OPTIONS...]
#
# SERVER OPTIONS go to echo_server (the suite runs it once plain, once with
# --pool: every connection receiving through one small shared buffer pool).
set -euo pipefail
# A stray exit status 77 must not read as "skipped" (tests/skip.sh).
# shellcheck source=skip.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/skip.sh"
server=$1 loadgen=$2
shift 2
work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap 'rc=$?; cleanup; finish_status $rc' EXIT
ulimit -n "$(ulimit -Hn)"

sock=$work/echo.sock
"$server" 0 --udp --unix "$sock" "$@" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^unix on' "$work/out" && break
  sleep 0.05
done
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/out")
[[ -n $port ]] || { echo "echo_server did not say where it listens"; cat "$work/out" "$work/err"; exit 1; }

# Every connection must complete verified round trips, not just the load as a
# whole: a server that starves or drops a few connections fails here. The
# floor is low enough for a busy 2-core machine (each connection usually
# completes dozens of round trips in the window) and still proves that every
# connection was served again and again.
floor=3
echo "== 2000 connections, 64 B"
"$loadgen" --port "$port" --connections 2000 --size 64 --duration 1 --warmup 0.3 --min-per-connection "$floor"
echo "== 100 connections, 100 KiB messages (short reads and writes)"
"$loadgen" --port "$port" --connections 100 --size 102400 --duration 1 --warmup 0.2 --min-per-connection "$floor"

echo "== 1000 idle connections beside 50 active ones: none dropped"
"$loadgen" --port "$port" --connections 50 --idle 1000 --size 64 --duration 0.5 --warmup 0.5 --min-per-connection "$floor"

echo "== 500 Unix socket connections, 64 B, and 4 KiB"
"$loadgen" --unix "$sock" --connections 500 --size 64 --duration 1 --warmup 0.2
"$loadgen" --unix "$sock" --connections 20 --size 4096 --duration 0.5 --warmup 0.1

echo "== UDP: 1000 datagrams echoed to their sender, every byte checked"
python3 - "$port" <<'PY'
import os, socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i in range(1000):
    msg = os.urandom(1 + i % 1400)
    s.sendto(msg, ("127.0.0.1", port))
    back, sender = s.recvfrom(2048)
    assert back == msg, f"datagram {i} came back wrong"
    assert sender == ("127.0.0.1", port)
print("1000 datagrams echoed")
PY

echo "== peers that reset or vanish"
python3 - "$port" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
for i in range(300):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"x" * 4096)
    if i % 2 == 0:  # reset: RST instead of FIN, echo data still unread
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()       # the others vanish without reading their echo
print("300 peers gone")
PY
kill -0 "$pid" || { echo "echo_server died"; cat "$work/err"; exit 1; }
echo "== still serving"
"$loadgen" --port "$port" --connections 50 --size 512 --duration 0.5 --warmup 0.1 --min-per-connection "$floor"

echo "== SIGUSR1 at both ends of a window (loadgen --server-counters): the counters, serving goes on"
"$loadgen" --port "$port" --connections 20 --size 64 --duration 0.3 --warmup 0.1 \
  --server-pid "$pid" --server-counters --json "$work/window.json" --min-per-connection "$floor"
for _ in $(seq 1 100); do
  (($(grep -c '^counters ' "$work/err") >= 2)) && break
  sleep 0.05
done
python3 - "$work/err" "$work/window.json" <<'PY'
import json, re, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("counters ")]
assert len(lines) == 2, f"expected two counters lines, got {lines}"
a, b = (dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", l)) for l in lines)
assert set(a) == {"enters", "cqes", "sqes"}, lines
w = json.load(open(sys.argv[2]))
rt = w["round_trips"]
d = {k: (b[k] - a[k]) % (1 << 32) for k in a}
# Every verified round trip is at least a receive and a send completion, and
# at least one request (the pool's receive is multishot: its send only).
assert d["cqes"] >= 1.5 * rt and d["sqes"] >= 0.9 * rt and d["enters"] > 0, (d, rt)
assert w["server_voluntary_switches"] >= 0, w
print(f"window: {rt} round trips, {d}")
PY

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[[ $status == 0 ]] || { echo "echo_server exited with $status on SIGTERM"; exit 1; }
grep -v '^counters ' "$work/err" >"$work/err.rest" || true
if [[ $(wc -l <"$work/out") != 3 || -s $work/err.rest ]]; then
  echo "echo_server printed more than its three listening lines:"; cat "$work/out" "$work/err"; exit 1
fi
[[ ! -e $sock ]] || { echo "echo_server left its Unix socket file behind"; exit 1; }
echo "echo_server: ok"

#!/usr/bin/env bash
# Buffer pools (stream::receive(pool)): memory per idle connection and server CPU per
# round trip, on 127.0.0.1 only.
#
#   benchmarks/pool_bench.sh SERVER_DIR [--quick] [--memory-only] [--cpu-only]
#
# SERVER_DIR is a meson build directory holding benchmarks/{loadgen,echo_raw_uring} and
# examples/echo_server.
#  - memory: 10,000 idle + 100 active connections (64 B ping-pong, every byte verified)
#    against echo_server (read(buf), 16 KiB per connection) and echo_server --pool 256
#    (4 KiB buffers); the server's RSS growth from before the first connect to the end of
#    the window, divided by 10,000.
#  - CPU: 1, 50, 500, 5,000 connections x 64 B and 4 KiB, server CPU time per verified
#    round trip, for raw liburing (echo_raw_uring), echo_server (read(buf)) and
#    echo_server --pool (8,192 buffers of 4 KiB), server pinned to CPU 0, loadgen to 1.
# Results: SERVER_DIR/bench/pool.json and a table. Exits non-zero if any run had errors.
set -uo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server_dir=""
quick=0
do_memory=1
do_cpu=1
for arg in "$@"; do
  case "$arg" in
  --quick) quick=1 ;;
  --memory-only) do_cpu=0 ;;
  --cpu-only) do_memory=0 ;;
  -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
  -*) echo "pool_bench.sh: unknown option $arg" >&2; exit 2 ;;
  *) server_dir=$arg ;;
  esac
done
[[ -n $server_dir && -d $server_dir ]] || { echo "pool_bench.sh: SERVER_DIR needed" >&2; exit 2; }
server_dir=$(cd "$server_dir" && pwd)
loadgen=$server_dir/benchmarks/loadgen
echo_server=$server_dir/examples/echo_server
raw=$server_dir/benchmarks/echo_raw_uring
for b in "$loadgen" "$echo_server" "$raw"; do
  [[ -x $b ]] || { echo "pool_bench.sh: $b is missing" >&2; exit 2; }
done
duration=3
((quick)) && duration=1

# 10,100 connections need descriptors on both ends (the hard limit must allow it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null
if (($(ulimit -n) < 10300)); then
  echo "pool_bench.sh: the open-file limit ($(ulimit -n)) is below 10,300: memory run skipped" >&2
  do_memory=0
fi

server_pin=()
load_pin=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  server_pin=(taskset -c 0)
  load_pin=(taskset -c 1)
fi
out_dir=$server_dir/bench
mkdir -p "$out_dir"
work=$(mktemp -d /tmp/couring-pool-bench.XXXXXX)
server_pid=""
failed=0

alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ ${stat##*) } != Z* ]]
}
stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  for _ in $(seq 100); do
    alive "$server_pid" || break
    sleep 0.05
  done
  kill -KILL "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
  server_pid=""
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ephemeral_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((ephemeral_low > 12000)) || ephemeral_low=32768
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    if [[ -z $(ss -tanH "sport = :$p" 2>/dev/null) ]]; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
wait_listening() {
  for _ in $(seq 100); do
    alive "$2" || return 1
    [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]] && return 0
    sleep 0.05
  done
  return 1
}

# run NAME CONNS SIZE IDLE WARMUP -- SERVER ARGS...
run() {
  local name=$1 c=$2 s=$3 idle=$4 warm=$5
  shift 6
  local port result=$work/$name-$c-$s-$idle.json
  port=$(free_port) || { echo "no free port" >&2; failed=1; return; }
  "${server_pin[@]}" "$1" "$port" "${@:2}" >"$work/$name.server.log" 2>&1 &
  server_pid=$!
  if ! wait_listening "$port" "$server_pid"; then
    echo "$name: server did not listen" >&2
    cat "$work/$name.server.log" >&2
    stop_server
    failed=1
    return
  fi
  printf '%-12s ' "$name"
  if ! timeout --kill-after=5 $((duration + 65)) "${load_pin[@]}" "$loadgen" \
    --port "$port" --connections "$c" --size "$s" --idle "$idle" --duration "$duration" \
    --warmup "$warm" --server-pid "$server_pid" --json "$result"; then
    failed=1
  fi
  alive "$server_pid" || { echo "$name: the server died" >&2; failed=1; }
  stop_server
}

if ((do_memory)); then
  echo "== memory per idle connection: 10,000 idle + 100 active (64 B), ${duration} s"
  # The warmup gives the server time to accept every connection before the window.
  run read 100 64 10000 3 -- "$echo_server"
  run pool 100 64 10000 3 -- "$echo_server" --pool 256
fi
if ((do_cpu)); then
  echo "== server CPU per round trip, ${duration} s per run"
  for c in 1 50 500 5000; do
    for s in 64 4096; do
      warm=0.5
      ((c >= 5000)) && warm=2
      run raw_uring "$c" "$s" 0 "$warm" -- "$raw"
      run read "$c" "$s" 0 "$warm" -- "$echo_server"
      run pool "$c" "$s" 0 "$warm" -- "$echo_server" --pool 8192
    done
  done
fi

python3 - "$work" "$out_dir/pool.json" <<'PY'
import glob, json, os, sys
work, out = sys.argv[1], sys.argv[2]
rows = []
for p in sorted(glob.glob(os.path.join(work, "*.json"))):
    name, c, s, idle = os.path.basename(p)[:-5].rsplit("-", 3)
    r = json.load(open(p))
    r.update(server=name, connections=int(c), size=int(s), idle=int(idle))
    rows.append(r)
json.dump(rows, open(out, "w"), indent=2)
def ok(r):
    return not r.get("errors") and not r.get("connections_below_floor")
mem = [r for r in rows if r["idle"] > 0]
if mem:
    print("\nmemory per idle connection (server RSS growth / idle connections):")
    for r in mem:
        print(f"  {r['server']:<6} {r.get('server_bytes_per_idle_connection', 0):8.0f} B"
              f"  (RSS {r.get('server_rss_before_kib')} -> {r.get('server_rss_kib')} KiB,"
              f" idle alive {r.get('idle_alive')}/{r['idle']}, errors {r.get('errors')})")
cpu = {(r["server"], r["connections"], r["size"]): r for r in rows if r["idle"] == 0}
if cpu:
    print("\nserver CPU us per round trip (ratios: lower is better for the first):")
    print(f"{'conns':>5} {'size':>5} {'raw':>7} {'read':>7} {'pool':>7} {'pool/raw':>9} {'pool/read':>10}")
    for c in (1, 50, 500, 5000):
        for s in (64, 4096):
            v = {k: cpu.get((k, c, s)) for k in ("raw_uring", "read", "pool")}
            if not any(v.values()):
                continue
            f = {k: (x["server_cpu_us_per_round_trip"] if x and ok(x) and x.get("server_cpu_us_per_round_trip") else None) for k, x in v.items()}
            def fmt(x): return f"{x:7.2f}" if x else "  error"
            def ratio(a, b): return f"{a / b:.2f}" if a and b else "n/a"
            print(f"{c:>5} {s:>5} {fmt(f['raw_uring'])} {fmt(f['read'])} {fmt(f['pool'])}"
                  f" {ratio(f['pool'], f['raw_uring']):>9} {ratio(f['pool'], f['read']):>10}")
print(f"\nresults: {out}")
PY
((failed)) && echo "SOME POOL RUNS HAD ERRORS" >&2
exit "$failed"

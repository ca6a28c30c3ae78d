#!/usr/bin/env bash
# Buffer pools (stream::receive(pool)): memory per idle connection and server CPU per
# round trip, on 127.0.0.1 only.
#
#   benchmarks/pool_bench.sh SERVER_DIR [--quick] [--memory-only] [--cpu-only] [--repeat N]
#                            [--configs "CxS ..."] [--pool-args "ARGS"] [--variant NAME=ARGS]...
#
# SERVER_DIR is a meson build directory holding benchmarks/{loadgen,echo_raw_uring} and
# examples/echo_server.
#  - memory: 10,000 idle + 100 active connections (64 B ping-pong, every byte verified)
#    against echo_server (read(buf), 16 KiB per connection) and echo_server --pool 256
#    (4 KiB buffers); the server's RSS growth from before the first connect to the end of
#    the window, divided by 10,000.
#  - CPU: 1, 50, 500, 5,000 connections x 64 B and 4 KiB (--configs "500x64 5000x4096"
#    picks some), server CPU time per verified round trip, for raw liburing
#    (echo_raw_uring), echo_server (read(buf)) and echo_server --pool 8192 (4 KiB
#    buffers; --pool-args replaces "--pool 8192"), server pinned to CPU 0, loadgen to 1.
#    --variant NAME=ARGS (repeatable) adds "echo_server ARGS" to the interleaving as NAME,
#    e.g. --variant plain="--pool 8192 --pool-options noinc,nobundle".
#    The three run interleaved, raw, read, pool, raw, read, pool, ... --repeat N times
#    (default 1) per configuration: the ratios pool/raw and read/raw are taken within
#    each repetition (side by side, so a noisy machine moves both) and the table gives
#    every run and the median. Per round trip, in the window (loadgen --server-counters
#    brackets it with SIGUSR1, on which both servers print their counters): io_uring_enter
#    calls, CQEs reaped, SQEs prepared, and the server's voluntary context switches
#    (/proc/PID/task/*/status: each is a sleep in io_uring_enter).
#    Fair by construction: one loadgen, the same pinning, the same ring in all three
#    (256 SQ / 1,024 CQ entries, single issuer, deferred task running, registered ring
#    fd), TCP_NODELAY everywhere, one io_uring_enter per loop turn. What differs is the
#    point: raw and read(buf) arm a receive per message (2 SQEs + 2 CQEs per round
#    trip), the pool keeps one multishot receive per stream (1 SQE + 2 CQEs).
# Results: SERVER_DIR/bench/pool.json and a table. Exits non-zero if any run had errors.
set -uo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server_dir=""
quick=0
do_memory=1
do_cpu=1
repeat=1
configs="1x64 1x4096 50x64 50x4096 500x64 500x4096 5000x64 5000x4096"
pool_args="--pool 8192"
variants=()
while (($#)); do
  arg=$1
  shift
  case "$arg" in
  --quick) quick=1 ;;
  --memory-only) do_cpu=0 ;;
  --cpu-only) do_memory=0 ;;
  --repeat | --configs | --pool-args | --variant)
    (($#)) || { echo "pool_bench.sh: $arg needs a value" >&2; exit 2; }
    case "$arg" in
    --repeat) repeat=$1 ;;
    --configs) configs=$1 ;;
    --pool-args) pool_args=$1 ;;
    --variant)
      [[ $1 =~ ^[a-z][a-z0-9_]*=.+$ && ! $1 =~ ^(raw_uring|read|pool)= ]] ||
        { echo "pool_bench.sh: --variant NAME=ARGS (NAME: lower-case, not raw_uring/read/pool)" >&2; exit 2; }
      variants+=("$1")
      ;;
    esac
    shift
    ;;
  -h | --help) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
  -*) echo "pool_bench.sh: unknown option $arg" >&2; exit 2 ;;
  *) server_dir=$arg ;;
  esac
done
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "pool_bench.sh: --repeat needs a positive number" >&2; exit 2; }
for cfg in $configs; do
  [[ $cfg =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "pool_bench.sh: bad --configs entry '$cfg' (CONNSxSIZE)" >&2; exit 2; }
done
read -r -a pool_argv <<<"$pool_args"
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

# run NAME CONNS SIZE IDLE WARMUP REP -- SERVER ARGS...
# CPU runs (IDLE 0) ask loadgen for --server-counters: the server's "counters" lines
# (printed on SIGUSR1 at both ends of the window) go to a .counters file beside the JSON.
run() {
  local name=$1 c=$2 s=$3 idle=$4 warm=$5 rep=$6
  shift 7
  local port base=$work/$name-$c-$s-$idle-$rep
  local counters=()
  ((idle == 0)) && counters=(--server-counters)
  port=$(free_port) || { echo "no free port" >&2; failed=1; return; }
  "${server_pin[@]}" "$1" "$port" "${@:2}" >"$base.server.log" 2>&1 &
  server_pid=$!
  if ! wait_listening "$port" "$server_pid"; then
    echo "$name: server did not listen" >&2
    cat "$base.server.log" >&2
    stop_server
    failed=1
    return
  fi
  printf '%-12s ' "$name"
  if ! timeout --kill-after=5 $((duration + 65)) "${load_pin[@]}" "$loadgen" \
    --port "$port" --connections "$c" --size "$s" --idle "$idle" --duration "$duration" \
    --warmup "$warm" --server-pid "$server_pid" "${counters[@]}" --json "$base.json"; then
    failed=1
  fi
  # The second SIGUSR1 is handled as the window ends: give the server a moment.
  ((idle == 0)) && for _ in $(seq 20); do
    (($(grep -c '^counters ' "$base.server.log") >= 2)) && break
    sleep 0.05
  done
  alive "$server_pid" || { echo "$name: the server died" >&2; failed=1; }
  stop_server
  grep '^counters ' "$base.server.log" >"$base.counters" 2>/dev/null
}

if ((do_memory)); then
  echo "== memory per idle connection: 10,000 idle + 100 active (64 B), ${duration} s"
  # The warmup gives the server time to accept every connection before the window.
  run read 100 64 10000 3 1 -- "$echo_server"
  run pool 100 64 10000 3 1 -- "$echo_server" --pool 256
fi
if ((do_cpu)); then
  echo "== server CPU per round trip, ${duration} s per run, ${repeat} interleaved repetition(s)"
  echo "   pool: echo_server ${pool_args}"
  for cfg in $configs; do
    c=${cfg%x*}
    s=${cfg#*x}
    warm=0.5
    ((c >= 5000)) && warm=2
    echo "-- $c connections x $s B"
    for rep in $(seq "$repeat"); do
      run raw_uring "$c" "$s" 0 "$warm" "$rep" -- "$raw"
      run read "$c" "$s" 0 "$warm" "$rep" -- "$echo_server"
      run pool "$c" "$s" 0 "$warm" "$rep" -- "$echo_server" "${pool_argv[@]}"
      for v in "${variants[@]}"; do
        read -r -a vargv <<<"${v#*=}"
        run "${v%%=*}" "$c" "$s" 0 "$warm" "$rep" -- "$echo_server" "${vargv[@]}"
      done
    done
  done
fi

python3 - "$work" "$out_dir/pool.json" "$pool_args" "${variants[@]}" <<'PY'
import glob, json, os, re, statistics, sys
work, out, pool_args = sys.argv[1], sys.argv[2], sys.argv[3]
variant_args = dict(v.split("=", 1) for v in sys.argv[4:])
rows = []
for p in sorted(glob.glob(os.path.join(work, "*.json"))):
    name, c, s, idle, rep = os.path.basename(p)[:-5].rsplit("-", 4)
    r = json.load(open(p))
    r.update(server=name, connections=int(c), size=int(s), idle=int(idle), repetition=int(rep))
    if name == "pool":
        r["server_args"] = pool_args
    elif name in variant_args:
        r["server_args"] = variant_args[name]
    # Counters over the window: the last two SIGUSR1 lines (the CQ and SQ indexes
    # of couring's ring wrap at 2^32).
    lines = []
    try:
        lines = [dict(re.findall(r"(\w+)=(\d+)", l)) for l in open(p[:-5] + ".counters")]
    except OSError:
        pass
    rt = r.get("round_trips") or 0
    if len(lines) >= 2 and rt > 0:
        a, b = lines[-2], lines[-1]
        for k in ("enters", "cqes", "sqes"):
            if k in a and k in b:
                d = int(b[k]) - int(a[k])
                if k != "enters":
                    d %= 1 << 32
                r[k] = d
                r[k + "_per_round_trip"] = d / rt
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
cpu = {(r["server"], r["connections"], r["size"], r["repetition"]): r for r in rows if r["idle"] == 0}
if cpu:
    servers = ("raw_uring", "read", "pool") + tuple(variant_args)
    extra = tuple(variant_args)
    def us(x):
        return x["server_cpu_us_per_round_trip"] if x and ok(x) and x.get("server_cpu_us_per_round_trip") else None
    def fmt(x, w=7, d=2):
        return f"{x:{w}.{d}f}" if x is not None else " " * (w - 3) + "n/a"
    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None
    configs = sorted({(c, s) for (_, c, s, _) in cpu})
    print("\nserver CPU us per round trip, every run (ratios within the repetition):")
    print(f"{'conns':>5} {'size':>5} {'rep':>3} {'raw':>7} {'read':>7} {'pool':>7} {'pool/raw':>9} {'read/raw':>9}"
          + "".join(f" {n[:7]:>7} {(n[:7] + '/raw'):>11}" for n in extra))
    summary = []
    for c, s in configs:
        reps = sorted({k[3] for k in cpu if k[1] == c and k[2] == s})
        pr, rr, xr = [], [], {n: [] for n in extra}
        for rep in reps:
            v = {k: us(cpu.get((k, c, s, rep))) for k in servers}
            a = v["pool"] / v["raw_uring"] if v["pool"] and v["raw_uring"] else None
            b = v["read"] / v["raw_uring"] if v["read"] and v["raw_uring"] else None
            pr.append(a)
            rr.append(b)
            line = ""
            for n in extra:
                x = v[n] / v["raw_uring"] if v[n] and v["raw_uring"] else None
                xr[n].append(x)
                line += f" {fmt(v[n])} {fmt(x, 11)}"
            print(f"{c:>5} {s:>5} {rep:>3} {fmt(v['raw_uring'])} {fmt(v['read'])} {fmt(v['pool'])}"
                  f" {fmt(a, 9)} {fmt(b, 9)}" + line)
        summary.append((c, s, reps, pr, rr, xr))
    print("\nmedians over the repetitions (us per round trip; per round trip in the window:"
          " enters = io_uring_enter calls, cqe, sqe, vcsw = voluntary context switches):")
    print(f"{'conns':>5} {'size':>5} {'n':>2} {'pool/raw':>9} {'read/raw':>9}"
          + "".join(f" {(n[:7] + '/raw'):>11}" for n in extra) + "   "
          + "   ".join(f"{(k[:7] + ' us enters cqe sqe vcsw'):<28}" for k in servers))
    for c, s, reps, pr, rr, xr in summary:
        cols = []
        for k in servers:
            runs = [cpu.get((k, c, s, rep)) for rep in reps]
            runs = [x for x in runs if x and ok(x)]
            m = lambda f: med([x.get(f) for x in runs])
            cols.append(f"{fmt(m('server_cpu_us_per_round_trip'), 6)} {fmt(m('enters_per_round_trip'), 5)}"
                        f" {fmt(m('cqes_per_round_trip'), 4, 1)} {fmt(m('sqes_per_round_trip'), 4, 1)}"
                        f" {fmt(m('server_voluntary_switches_per_round_trip'), 5)}")
        print(f"{c:>5} {s:>5} {len(reps):>2} {fmt(med(pr), 9)} {fmt(med(rr), 9)}"
              + "".join(f" {fmt(med(xr[n]), 11)}" for n in extra) + "   "
              + "   ".join(f"{x:<28}" for x in cols))
print(f"\nresults: {out}")
PY
((failed)) && echo "SOME POOL RUNS HAD ERRORS" >&2
exit "$failed"

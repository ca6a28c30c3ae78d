#!/usr/bin/env bash
# Echo server comparison: blocking thread-per-connection vs hand-written raw liburing vs
# couring, and hand-written epoll vs couring on its epoll backend, on 127.0.0.1 only.
#
#   benchmarks/run.sh SERVER_DIR [--plot] [--quick]
#
# SERVER_DIR is a meson build directory holding benchmarks/{loadgen,echo_blocking,
# echo_raw_uring} and examples/echo_server. For every server x connections (1, 50, 500) x
# message size (64, 4096) it starts the server on a free port, waits until it listens,
# runs loadgen (closed-loop ping-pong, 0.5 s warmup + 3 s measured, 1 s with --quick)
# with the server pinned to CPU 0 and loadgen to CPU 1, and stops the server.
# Results: SERVER_DIR/bench/servers.json, then a table and the server CPU time per round
# trip ratios. Also runs SERVER_DIR/benchmarks/bench_ops (Google Benchmark) if it was
# built, into SERVER_DIR/bench/ops.json, and benchmarks/stream_bench (one connection's
# GB/s) into SERVER_DIR/bench/stream.json. --plot draws docs/performance.png with gnuplot.
# Exits non-zero if any run had errors.
set -uo pipefail

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$script_dir")

server_dir=""
plot=0
quick=0
for arg in "$@"; do
  case "$arg" in
  --plot) plot=1 ;;
  --quick) quick=1 ;;
  -h | --help) usage ;;
  -*) echo "run.sh: unknown option $arg" >&2; usage ;;
  *)
    [[ -z $server_dir ]] || { echo "run.sh: more than one SERVER_DIR" >&2; usage; }
    server_dir=$arg
    ;;
  esac
done
[[ -n $server_dir ]] || usage
[[ -d $server_dir ]] || { echo "run.sh: no such directory: $server_dir" >&2; exit 2; }
server_dir=$(cd "$server_dir" && pwd)

loadgen=$server_dir/benchmarks/loadgen
[[ -x $loadgen ]] || { echo "run.sh: $loadgen is missing (build the benchmarks)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "run.sh: python3 is required" >&2; exit 2; }
command -v ss >/dev/null || { echo "run.sh: ss (iproute2) is required" >&2; exit 2; }

kinds=(blocking raw_uring couring epoll couring_epoll)
declare -A server_bin=(
  [blocking]=$server_dir/benchmarks/echo_blocking
  [raw_uring]=$server_dir/benchmarks/echo_raw_uring
  [couring]=$server_dir/examples/echo_server
  [epoll]=$server_dir/benchmarks/echo_epoll
  [couring_epoll]=$server_dir/examples/echo_server
)
# couring_epoll is the couring server on its epoll backend.
declare -A server_env=([couring_epoll]=COURING_BACKEND=epoll)
connections=(1 50 500)
sizes=(64 4096)
warmup=0.5
duration=3
((quick)) && duration=1

# Two CPUs or more: the server gets CPU 0 to itself, loadgen CPU 1.
server_pin=()
load_pin=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  server_pin=(taskset -c 0)
  load_pin=(taskset -c 1)
fi

out_dir=$server_dir/bench
mkdir -p "$out_dir"
work=$(mktemp -d /tmp/couring-bench.XXXXXX)
server_pid=""

stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  for _ in $(seq 40); do
    alive "$server_pid" || break
    sleep 0.05
  done
  kill -KILL "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
  server_pid=""
}

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port below the ephemeral range (so no client socket of an earlier run holds it) that
# nothing uses.
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

alive() { # PID; a child that exited stays a zombie until waited for
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ ${stat##*) } != Z* ]]
}

wait_listening() { # PORT PID
  for _ in $(seq 100); do
    alive "$2" || return 1
    [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]] && return 0
    sleep 0.05
  done
  return 1
}

failed=0
start_time=$SECONDS
# Other processes competing for the CPUs make every figure noisy: say so.
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
read -r busy0 idle0 < <(cpu_busy)
sleep 0.5
read -r busy1 idle1 < <(cpu_busy)
busy_pct=$((100 * (busy1 - busy0) / (busy1 - busy0 + idle1 - idle0 + 1)))
if ((busy_pct > 10)); then
  echo "WARNING: the CPUs are ${busy_pct}% busy before the runs: figures will be noisy" >&2
fi
echo "echo servers on 127.0.0.1: ${duration} s measured + ${warmup} s warmup per run," \
  "server pinned: ${server_pin[*]:-no}, loadgen pinned: ${load_pin[*]:-no}"

# Servers that were not built are skipped.
present=()
for kind in "${kinds[@]}"; do
  if [[ -x ${server_bin[$kind]} ]]; then
    present+=("$kind")
  else
    echo "WARNING: ${server_bin[$kind]} is missing: $kind skipped" >&2
  fi
done

# The server kinds take turns for each configuration, so that slow drifts of the machine
# affect them alike.
for c in "${connections[@]}"; do
  for s in "${sizes[@]}"; do
    for kind in "${present[@]}"; do
      bin=${server_bin[$kind]}
      result=$work/$kind-$c-$s.json
      port=$(free_port) || { echo "run.sh: no free port" >&2; exit 1; }
      env ${server_env[$kind]:-} "${server_pin[@]}" "$bin" "$port" >"$work/$kind-$c-$s.server.log" 2>&1 &
      server_pid=$! # env and taskset exec the server: same pid
      if ! wait_listening "$port" "$server_pid"; then
        echo "$kind: server did not listen on 127.0.0.1:$port" >&2
        cat "$work/$kind-$c-$s.server.log" >&2
        stop_server
        echo "{\"errors\": 1, \"note\": \"server did not start\"}" >"$result"
        failed=1
        continue
      fi
      printf '%-13s ' "$kind"
      timeout --kill-after=5 $((duration + 30)) \
        "${load_pin[@]}" "$loadgen" --port "$port" --connections "$c" --size "$s" \
        --duration "$duration" --warmup "$warmup" --server-pid "$server_pid" --json "$result"
      rc=$?
      if ! alive "$server_pid"; then
        echo "$kind: the server died during the run" >&2
        cat "$work/$kind-$c-$s.server.log" >&2
        rc=1
      fi
      stop_server
      if ((rc != 0)); then
        failed=1
        [[ -s $result ]] || echo "{\"errors\": 1, \"note\": \"loadgen exit status $rc\"}" >"$result"
      fi
    done
  done
done

python3 - "$work" "$out_dir/servers.json" "$duration" <<'EOF'
import json, os, sys

work, out_path, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
kinds = ["blocking", "raw_uring", "couring", "epoll", "couring_epoll"]
conns = [1, 50, 500]
sizes = [64, 4096]
rows = []
for k in kinds:
    for c in conns:
        for s in sizes:
            p = os.path.join(work, f"{k}-{c}-{s}.json")
            if not os.path.exists(p):
                continue
            with open(p) as f:
                r = json.load(f)
            row = {"server": k, "connections": c, "size": s}
            for key in ("round_trips_per_sec", "p50_us", "p99_us", "errors",
                        "server_cpu_us_per_round_trip", "byte_errors", "round_trips",
                        "seconds", "p999_us", "server_cpu_seconds", "client_cpu_seconds",
                        "min_round_trips_per_connection", "connections_below_floor", "note"):
                if key in r:
                    row[key] = r[key]
            rows.append(row)
with open(out_path, "w") as f:
    json.dump(rows, f, indent=2)
    f.write("\n")

def fmt(v, spec):
    if isinstance(v, (int, float)):
        return format(v, spec)
    return "-".rjust(int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()) or 0))

print()
print(f"{'server':<13} {'conns':>5} {'size':>5} {'round trips/s':>13} {'p50 us':>9} "
      f"{'p99 us':>9} {'CPU us/rt':>9} {'errors':>6}")
# A run with an error (a failed or corrupted round trip, a starved connection,
# a server that did not start) measured something else: it is marked here and
# feeds no ratio below.
def had_error(r):
    return bool(r.get("errors")) or bool(r.get("connections_below_floor")) or "note" in r
for r in rows:
    print(f"{r['server']:<13} {r['connections']:>5} {r['size']:>5} "
          f"{fmt(r.get('round_trips_per_sec'), '13.0f')} {fmt(r.get('p50_us'), '9.1f')} "
          f"{fmt(r.get('p99_us'), '9.1f')} {fmt(r.get('server_cpu_us_per_round_trip'), '9.2f')} "
          f"{fmt(r.get('errors'), '6d')}" + ("  ERROR: left out of the ratios" if had_error(r) else ""))

# A run with an error (a failed or corrupted round trip, a starved connection,
# a server that did not start) measured something else: it feeds no ratio.
bad = {(r["server"], r["connections"], r["size"]) for r in rows if had_error(r)}
cpu = {(r["server"], r["connections"], r["size"]): r.get("server_cpu_us_per_round_trip")
       for r in rows if not had_error(r)}
def ratio(a, b, c, s):
    if (a, c, s) in bad or (b, c, s) in bad:
        return "error"
    x, y = cpu.get((a, c, s)), cpu.get((b, c, s))
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y > 0:
        return f"{x / y:.2f}"
    return "n/a"

print()
print("server CPU time per round trip, ratios (lower is better for the first):")
print(f"{'conns':>5} {'size':>5} {'couring/raw':>12} {'couring/blocking':>17} {'raw/blocking':>13}"
      f" {'couring_epoll/epoll':>20} {'couring/couring_epoll':>22}")
for c in conns:
    for s in sizes:
        print(f"{c:>5} {s:>5} {ratio('couring', 'raw_uring', c, s):>12} "
              f"{ratio('couring', 'blocking', c, s):>17} {ratio('raw_uring', 'blocking', c, s):>13}"
              f" {ratio('couring_epoll', 'epoll', c, s):>20}"
              f" {ratio('couring', 'couring_epoll', c, s):>22}")
print("(target: couring_epoll/epoll <= 1.10)")
print(f"\nresults: {out_path}")
EOF
((failed)) && echo "SOME RUNS HAD ERRORS" >&2

ops=$server_dir/benchmarks/bench_ops
if [[ -x $ops ]]; then
  echo
  echo "== bench_ops"
  # Repetitions in random interleaving: the machine's drift hits both sides
  # of each pair alike; the ratios come from the medians.
  ops_args=(--benchmark_out="$out_dir/ops.json" --benchmark_out_format=json
    --benchmark_repetitions=7 --benchmark_enable_random_interleaving=true
    --benchmark_report_aggregates_only=true --benchmark_min_time=0.3)
  ((quick)) && ops_args+=(--benchmark_min_time=0.05 --benchmark_repetitions=3)
  if ! timeout --kill-after=5 150 "$ops" "${ops_args[@]}"; then
    echo "bench_ops failed" >&2
    failed=1
  else
    python3 - "$out_dir/ops.json" <<'PY'
import json, sys
benches = json.load(open(sys.argv[1]))["benchmarks"]
# A benchmark that reported an error (SkipWithError) in any repetition
# measured something else: it feeds no ratio.
failed = {b["run_name"] for b in benches if b.get("error_occurred")}
for name in sorted(failed):
    print(f"ERROR in {name}: left out of the ratios")
runs = {b["run_name"]: b["real_time"] for b in benches
        if b.get("aggregate_name") == "median" and b["run_name"] not in failed}
def ratio(ours, theirs):
    if ours in failed or theirs in failed:
        return "error"
    a, b = runs.get(ours), runs.get(theirs)
    return f"{a / b:5.2f}" if a and b else "  n/a"
print()
print("time per operation, medians of the interleaved repetitions:")
print(f"  NOP, 1 in flight:   couring/raw      {ratio('couring_nop/1/real_time', 'raw_nop/1/real_time')}  (target <= 1.05)")
print(f"  NOP, 32 in flight:  couring/raw      {ratio('couring_nop/32/real_time', 'raw_nop/32/real_time')}  (target <= 1.05)")
print(f"  NOP, 1 in flight:   floor/raw        {ratio('floor_nop/1/real_time', 'raw_nop/1/real_time')}  (a coroutine with no guarantees)")
print(f"  NOP, 32 in flight:  floor/raw        {ratio('floor_nop/32/real_time', 'raw_nop/32/real_time')}")
print(f"  NOP, 1 in flight:   couring/floor    {ratio('couring_nop/1/real_time', 'floor_nop/1/real_time')}  (what couring's guarantees cost)")
print(f"  NOP, 32 in flight:  couring/floor    {ratio('couring_nop/32/real_time', 'floor_nop/32/real_time')}")
print(f"  ping-pong 64 B:     couring/blocking {ratio('couring_ping_pong/64/real_time', 'blocking_ping_pong/64/real_time')}")
print(f"  ping-pong 4 KiB:    couring/blocking {ratio('couring_ping_pong/4096/real_time', 'blocking_ping_pong/4096/real_time')}")
print(f"  datagrams 64 B:     couring/blocking {ratio('couring_udp_ping_pong/64/real_time', 'blocking_udp_ping_pong/64/real_time')}")
print(f"  datagrams 1 KiB:    couring/blocking {ratio('couring_udp_ping_pong/1024/real_time', 'blocking_udp_ping_pong/1024/real_time')}")
PY
  fi
else
  echo "($ops not built: no micro-benchmarks)"
fi

if ((plot)); then
  if ! command -v gnuplot >/dev/null; then
    echo "run.sh: --plot needs gnuplot (apt-get install gnuplot-nox)" >&2
    failed=1
  else
    terminal=png
    gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo && terminal=pngcairo
    mkdir -p "$repo_root/docs"
    if ! python3 - "$out_dir/servers.json" "$work" "$repo_root/docs/performance.png" "$terminal" \
      "$duration" >"$work/plot.gp" <<'EOF'
import json, sys

src, work, png, terminal, duration = sys.argv[1:6]
rows = json.load(open(src))
styles = {"blocking": ("#c0392b", 5), "raw_uring": ("#2471a3", 7), "couring": ("#1e8449", 9),
          "epoll": ("#7d3c98", 11), "couring_epoll": ("#b9770e", 13)}
plots_rps, plots_cpu = [], []
for kind, (color, pt) in styles.items():
    for size, dt in ((64, 1), (4096, 2)):
        pts = sorted((r["connections"], r["round_trips_per_sec"], r["server_cpu_us_per_round_trip"])
                     for r in rows
                     if r["server"] == kind and r["size"] == size
                     and isinstance(r.get("round_trips_per_sec"), (int, float))
                     and isinstance(r.get("server_cpu_us_per_round_trip"), (int, float)))
        if not pts:
            continue
        dat = f"{work}/{kind}-{size}.dat"
        with open(dat, "w") as f:
            for c, rps, cpu in pts:
                f.write(f"{c} {rps} {cpu}\n")
        style = f"with linespoints lw 2 pt {pt} ps 1.2 lc rgb '{color}' dt {dt}"
        title = f"{kind} {size} B"
        plots_rps.append(f"'{dat}' using 1:2 {style} title '{title}'")
        plots_cpu.append(f"'{dat}' using 1:3 {style} title '{title}'")
if not plots_rps:
    sys.exit("no data to plot")
font = "font 'sans,10'" if terminal == "pngcairo" else ""
print(f"""set terminal {terminal} size 1400,600 noenhanced {font}
set output '{png}'
set multiplot layout 1,2 margins 0.06,0.98,0.17,0.90 spacing 0.08,0 title "Echo servers on 127.0.0.1, closed-loop ping-pong ({float(duration):g} s per point), server on one CPU; solid 64 B, dashed 4096 B"
set logscale x
set xrange [0.7:750]
set xtics ("1" 1, "50" 50, "500" 500)
set xlabel 'connections'
set grid
set key at screen 0.5,0.015 center bottom horizontal maxrows 1 width 1
set yrange [0:*]
set format y '%.0s%c'
set ylabel 'round trips / s (higher is better)'
set title 'Throughput'
plot {", ".join(plots_rps)}
set format y '%g'
set ylabel 'server CPU µs per round trip (lower is better)'
set title 'Server CPU time per round trip'
unset key
plot {", ".join(plots_cpu)}
unset multiplot""")
EOF
    then
      echo "run.sh: cannot prepare the plot" >&2
      failed=1
    elif gnuplot "$work/plot.gp"; then
      echo "plot: $repo_root/docs/performance.png"
    else
      echo "run.sh: gnuplot failed" >&2
      failed=1
    fi
  fi
fi

# Buffer pools: memory per idle connection, CPU per round trip up to 5,000 connections.
echo
pool_args=()
((quick)) && pool_args+=(--quick)
"$script_dir/pool_bench.sh" "$server_dir" "${pool_args[@]}" || failed=1

# Single-stream echo (stream_bench): 4 GiB over one connection, every byte checked,
# blocking / epoll / raw liburing / couring, 3 interleaved runs (--quick: 256 MiB, 1 run).
if [[ -x $server_dir/benchmarks/stream_bench ]]; then
  echo
  echo "== single-stream echo, one connection (stream_bench)"
  stream_args=(--runs 3 --json "$out_dir/stream.json")
  ((quick)) && stream_args=(--quick --json "$out_dir/stream.json")
  "$server_dir/benchmarks/stream_bench" "${stream_args[@]}" || failed=1
fi

echo "total time: $((SECONDS - start_time)) s"
# Every core: echo_server --threads 1 and 2, and the cross-context hand-off.
if [[ -x $script_dir/threads_bench.sh ]]; then
  threads_args=()
  ((quick)) && threads_args+=(--quick)
  "$script_dir/threads_bench.sh" "$server_dir" "${threads_args[@]}" || failed=1
fi

exit "$failed"

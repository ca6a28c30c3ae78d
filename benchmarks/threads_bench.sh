#!/usr/bin/env bash
# Every core: examples/echo_server --threads N under loadgen, then the
# cross-context hand-off micro-benchmark (benchmarks/bench_handoff).
#
#   benchmarks/threads_bench.sh BUILD_DIR [--quick] [--threads "1 2"] [--connections "50 500"]
#                                         [--repeat N] [--duration S]
#                                         [--server-cpus LIST] [--load-cpus LIST] [--float]
#                                         [--wait-batch "1 8:20"] [--trace]
#
# For each thread count x connection count x mode (reuseport, and handoff for
# N > 1) it starts echo_server PORT --threads N, runs loadgen (64-byte
# ping-pong, 0.5 s warmup + 3 s, 1 s with --quick) and prints round trips per
# second, the server's CPU time per round trip (all its threads) and its
# context switches per round trip (voluntary: a thread went to sleep in
# io_uring_enter; involuntary: it was preempted; counted from
# /proc/PID/task/*/status over warmup + run, so approximate). --repeat N runs
# the whole list N times, interleaved (every configuration once, then again),
# so that a noisy machine's load is shared alike; compare within a round. At the
# end a summary gives, per configuration, the medians over the rounds and the
# median of the per-round ratios of server CPU per round trip to the 1-thread
# run of the same round (same connections): on a shared machine one run moves
# by +-20 %, so only that ratio, over many rounds, says whether CPU per round
# trip grows with threads. It must not; round trips per second show the
# scaling -- on a machine with more cores than this 2-core one. There,
# give the server N cores and the load generator others, e.g.
#   benchmarks/threads_bench.sh build-release --threads "1 2 4 8" \
#     --server-cpus 0-7 --load-cpus 8-15 --connections "500 2000"
# (loadgen is one thread: when it saturates its core before the server does,
# run several with a share of the connections each and add the rates up).
# --wait-batch LIST runs every configuration with each echo_server
# --wait-batch value (io_context_options::wait_batch, N[:US]; 1: off).
# --trace counts, with perf tracepoints on the server's threads over
# loadgen's measuring window, per round trip: io_uring_enter calls, CQEs
# posted, waits that found too few CQEs and went to wait
# (io_uring_cqring_wait), context switches (sched_switch: each is a sleep
# or a preemption) and requests punted to the kernel's worker pool
# (io_uring_queue_async_work: the pool ATTACH_WQ shares). Tracing costs CPU:
# compare its figures with each other, not with an untraced run.
set -uo pipefail
dir=${1:?usage: threads_bench.sh BUILD_DIR [--quick] ...}
shift
threads="1 2"
conns="50 500"
duration=3
repeat=1
server_cpus=""
load_cpus=""
float=0
batches=1
trace=0
while (($#)); do
  case $1 in
  --quick) duration=1 ;;
  --duration) duration=$2; shift ;;
  --repeat) repeat=$2; shift ;;
  --threads) threads=$2; shift ;;
  --connections) conns=$2; shift ;;
  --server-cpus) server_cpus=$2; shift ;;
  --load-cpus) load_cpus=$2; shift ;;
  --float) float=1 ;;
  --wait-batch) batches=$2; shift ;;
  --trace) trace=1 ;;
  *) echo "threads_bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
server=$dir/examples/echo_server
loadgen=$dir/benchmarks/loadgen
[[ -x $server && -x $loadgen ]] || { echo "threads_bench.sh: build $server and $loadgen first" >&2; exit 2; }
# By default the load generator gets the last CPU and the server all the
# others, whatever --threads: the server's CPU budget is the same for every
# thread count, so what CPU per round trip measures is the cost of running N
# contexts, not the scheduler sharing 2 cores between N + 1 busy threads (the
# load generator's thread on a server's CPU preempts it, and a server thread
# whose CPU goes idle halts: on a VM each wake-up is then a hypervisor round
# trip). On this 2-CPU machine: server on CPU 0, loadgen on CPU 1, so
# --threads 2 runs 2 contexts on one core. --float lets the scheduler place
# everything (the figures then include that sharing: README, "Using every core").
ncpu=$(nproc)
if ((!float && ncpu >= 2)); then
  [[ -n $load_cpus ]] || load_cpus=$((ncpu - 1))
  [[ -n $server_cpus ]] || server_cpus=$( ((ncpu == 2)) && echo 0 || echo "0-$((ncpu - 2))")
fi
pin() { [[ -n $1 ]] && command -v taskset >/dev/null && echo "taskset -c $1"; }
failed=0
rows=$(mktemp /tmp/couring-threads-rows.XXXXXX)
echo "== echo_server --threads: 64-byte round trips, ${duration} s per run" \
  "(server CPUs: ${server_cpus:-any}, loadgen CPUs: ${load_cpus:-any})"
# Context switches of every thread of process $1: "voluntary involuntary".
ctxsw() {
  awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {i += $2}
       END {print v + 0, i + 0}' /proc/"$1"/task/*/status 2>/dev/null
}
span=$(awk -v d="$duration" 'BEGIN {print d + 0.5}')
trace_events=syscalls:sys_enter_io_uring_enter,io_uring:io_uring_complete,io_uring:io_uring_cqring_wait,sched:sched_switch,io_uring:io_uring_queue_async_work
if ((trace)) && ! perf stat -e "$trace_events" -- true >/dev/null 2>&1; then
  echo "threads_bench.sh: --trace needs perf with tracepoints (root, linux-perf)" >&2
  exit 2
fi
header="$(printf '%-6s %-8s %-10s %-6s %6s %14s %18s %12s %12s %8s %8s' round threads mode batch \
  conns round_trips/s server_us/round_trip vol_csw/rt invol_csw/rt p50_us p99_us)"
((trace)) && header+="$(printf ' %9s %9s %9s %9s %9s' enters/rt cqes/rt waits/rt switch/rt iowq/rt)"
echo "$header"
for round in $(seq "$repeat"); do
for n in $threads; do
  modes=reuseport
  ((n > 1)) && modes="reuseport handoff"
  for mode in $modes; do
    for c in $conns; do
      for batch in $batches; do
      log=$(mktemp /tmp/couring-threads.XXXXXX)
      # shellcheck disable=SC2046
      $(pin "$server_cpus") "$server" 0 --threads "$n" --"$mode" --wait-batch "$batch" >"$log" 2>&1 &
      pid=$!
      port=""
      for _ in $(seq 100); do
        port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$log")
        [[ -n $port ]] && break
        sleep 0.05
      done
      if [[ -z $port ]]; then
        echo "echo_server --threads $n did not start:" >&2
        cat "$log" >&2
        kill -KILL "$pid" 2>/dev/null
        failed=1
        continue
      fi
      read -r v0 i0 <<<"$(ctxsw "$pid")"
      tracelog=""
      if ((trace)); then
        # Over loadgen's measuring window: after its warmup, for its duration.
        tracelog=$(mktemp /tmp/couring-trace.XXXXXX)
        (sleep 0.5 && exec perf stat -p "$pid" -x, -e "$trace_events" -o "$tracelog" -- sleep "$duration") &
        tracer=$!
      fi
      # shellcheck disable=SC2046
      line=$($(pin "$load_cpus") "$loadgen" --port "$port" --connections "$c" --size 64 \
        --duration "$duration" --warmup 0.5 --server-pid "$pid" 2>&1 | tail -1)
      read -r v1 i1 <<<"$(ctxsw "$pid")"
      ((trace)) && wait "$tracer"
      kill -TERM "$pid"
      wait "$pid" || { echo "echo_server --threads $n exited with an error" >&2; failed=1; }
      rm -f "$log"
      rate=$(sed -n 's/.*round_trips_per_sec=\([0-9.]*\).*/\1/p' <<<"$line")
      cpu=$(sed -n 's/.*server_cpu_us_per_round_trip=\([0-9.]*\).*/\1/p' <<<"$line")
      errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$line")
      [[ ${errors:-1} == 0 ]] || { echo "loadgen: $line" >&2; failed=1; }
      # Per round trip over warmup + run (loadgen's rate times both).
      per_rt() { awk -v d="$1" -v r="${rate:-0}" -v t="$2" \
        'BEGIN {if (r > 0) printf "%.3f", d / (r * t); else print "?"}'; }
      p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$line")
      p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$line")
      out="$(printf '%-6s %-8s %-10s %-6s %6s %14s %18s %12s %12s %8s %8s' "$round" "$n" "$mode" \
        "$batch" "$c" "${rate:-?}" "${cpu:-?}" "$(per_rt $((v1 - v0)) "$span")" \
        "$(per_rt $((i1 - i0)) "$span")" "${p50:-?}" "${p99:-?}")"
      if ((trace)); then
        count() { awk -F, -v e="$1" '$3 == e {s += $1} END {print s + 0}' "$tracelog"; }
        out+="$(printf ' %9s %9s %9s %9s %9s' \
          "$(per_rt "$(count syscalls:sys_enter_io_uring_enter)" "$duration")" \
          "$(per_rt "$(count io_uring:io_uring_complete)" "$duration")" \
          "$(per_rt "$(count io_uring:io_uring_cqring_wait)" "$duration")" \
          "$(per_rt "$(count sched:sched_switch)" "$duration")" \
          "$(per_rt "$(count io_uring:io_uring_queue_async_work)" "$duration")")"
        rm -f "$tracelog"
      fi
      echo "$out"
      echo "$round $n $mode $batch $c ${rate:-?} ${cpu:-?}" >>"$rows"
      done
    done
  done
done
done
# The summary: medians over the rounds, and the median of the per-round ratios
# of CPU per round trip against 1 thread (reuseport, same batch and
# connections) with their range. mawk has no sort: an insertion sort.
awk '
  function median(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++)
      for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    if (n == 0) return "?"
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function range(list,   n, v, i, lo, hi) {
    n = split(list, v, " "); lo = hi = v[1]
    for (i = 2; i <= n; i++) { if (v[i] + 0 < lo + 0) lo = v[i]; if (v[i] + 0 > hi + 0) hi = v[i] }
    return sprintf("%.2f-%.2f", lo, hi)
  }
  $6 != "?" && $7 != "?" {
    key = $2 " " $3 " " $4 " " $5
    if (!(key in seen)) { seen[key] = 1; order[++nkeys] = key }
    rate[key] = rate[key] " " $6; cpu[key] = cpu[key] " " $7
    at[$1, key] = $7
    if ($2 == 1 && $3 == "reuseport") base[$1, $4 " " $5] = $7
    rounds[$1] = 1
  }
  END {
    if (nkeys == 0) exit
    print "== summary: medians over the rounds; cpu ratio: median (range) of each round'"'"'s server CPU per round trip / 1 thread'"'"'s"
    printf "%-8s %-10s %-6s %6s %14s %18s %22s\n", "threads", "mode", "batch", "conns", "round_trips/s", "server_us/round_trip", "cpu_ratio_to_1_thread"
    for (k = 1; k <= nkeys; k++) {
      key = order[k]; split(key, f, " ")
      ratios = ""
      for (r in rounds)
        if ((r, key) in at && (r, f[3] " " f[4]) in base && base[r, f[3] " " f[4]] > 0)
          ratios = ratios " " at[r, key] / base[r, f[3] " " f[4]]
      ratio = ratios == "" ? "-" : sprintf("%.3f (%s)", median(ratios), range(ratios))
      printf "%-8s %-10s %-6s %6s %14.0f %18.3f %22s\n", f[1], f[2], f[3], f[4], median(rate[key]), median(cpu[key]), ratio
    }
  }' "$rows"
rm -f "$rows"
if [[ -x $dir/benchmarks/bench_handoff ]]; then
  echo "== cross-context hand-off (bench_handoff)"
  rounds=200000
  [[ $duration == 1 ]] && rounds=50000
  "$dir/benchmarks/bench_handoff" "$rounds" || failed=1
fi
exit "$failed"

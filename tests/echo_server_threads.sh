#!/usr/bin/env bash
# examples/echo_server --threads N as threads_bench.sh runs it: every
# connection served with every byte checked on 2 threads, in both modes,
# with the batched sleep off and on (--wait-batch, io_context_options::
# wait_batch), and a clean exit on SIGTERM; a bad --wait-batch is refused.
# 127.0.0.1 only, bounded in time. The epoll setup runs it on epoll too.
#
#   echo_server_threads.sh ECHO_SERVER LOADGEN
set -euo pipefail
# shellcheck source=skip.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/skip.sh"
server=$1 loadgen=$2
work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap 'rc=$?; cleanup; finish_status $rc' EXIT
ulimit -n "$(ulimit -Hn)"

for bad in 0 4097 8:0 8:10001 8: x 8:20:1; do
  status=0
  "$server" 0 --threads 2 --wait-batch "$bad" >/dev/null 2>"$work/err" || status=$?
  [[ $status == 2 ]] || { echo "--wait-batch $bad: exit $status, expected 2"; exit 1; }
  grep -q "bad --wait-batch" "$work/err" || { echo "--wait-batch $bad: no message"; exit 1; }
done

for mode in reuseport handoff; do
  for batch in 1 8:20 64:1000; do
    echo "== --threads 2 --$mode --wait-batch $batch"
    # A fresh file each time: the background shell truncates out only once
    # it runs, and the last server's port read meanwhile is a dead one.
    rm -f "$work/out"
    "$server" 0 --threads 2 --"$mode" --wait-batch "$batch" >"$work/out" 2>"$work/err" &
    pid=$!
    port=
    for _ in $(seq 1 100); do
      # (out appears once the background shell has opened it)
      port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/out" 2>/dev/null || true)
      [[ -n $port ]] && break
      sleep 0.05
    done
    [[ -n $port ]] || { echo "echo_server did not start"; cat "$work/out" "$work/err"; exit 1; }
    # The batched sleep holds a lone completion for up to its window, never
    # longer: 500 connections each complete round trips again and again.
    "$loadgen" --port "$port" --connections 500 --size 64 --duration 1 --warmup 0.2 \
      --min-per-connection 3
    "$loadgen" --port "$port" --connections 3 --idle 200 --size 4096 --duration 0.5 --warmup 0.1 \
      --min-per-connection 3
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    pid=
    [[ $status == 0 ]] || { echo "echo_server exited with $status on SIGTERM"; cat "$work/err"; exit 1; }
  done
done
echo "ok"

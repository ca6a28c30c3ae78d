#!/usr/bin/env bash
# benchmarks/stream_bench --quick (256 MiB echoed over one connection, every
# byte checked) on every server, at two buffer sizes (the zero-copy variants
# at one); then the checker itself:
# a server that alters one byte and one that ends the echo early must fail the
# run with the right diagnosis.
#
#   stream_bench_smoke.sh STREAM_BENCH
set -uo pipefail
bench=$1
status=0

for buffer in 64K 256K; do
  if ! timeout --kill-after=5 150 "$bench" --quick --buffer "$buffer"; then
    echo "FAIL: stream_bench --quick --buffer $buffer" >&2
    status=1
  fi
done

# The variants run only on request: zero-copy (one size: they are slow), and
# relay on a non-blocking socket and on the epoll backend.
if ! timeout --kill-after=5 150 "$bench" --quick --servers couring-zc,uring-fixed,couring-relay-nb,couring-relay-epoll; then
  echo "FAIL: stream_bench --quick --servers couring-zc,uring-fixed,couring-relay-nb,couring-relay-epoll" >&2
  status=1
fi

# expect_failure SERVER PATTERN: the run must exit 1 and say PATTERN.
expect_failure() {
  local out rc
  out=$(timeout --kill-after=5 60 "$bench" --quick --servers "$1" 2>&1)
  rc=$?
  echo "$out"
  if [[ $rc != 1 ]]; then
    echo "FAIL: $1: exit status $rc, expected 1" >&2
    status=1
  elif ! grep -q "$2" <<<"$out"; then
    echo "FAIL: $1: no '$2' in the output" >&2
    status=1
  fi
}
expect_failure faulty-corrupt 'mismatch at byte 5000000'
expect_failure faulty-short 'short stream'
exit "$status"

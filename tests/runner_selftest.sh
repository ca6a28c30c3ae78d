#!/usr/bin/env bash
# The test runner's own checks can fail: a Catch2 binary with 77 failed
# assertions exits 1 (not 77, "skipped"), a shell test's stray exit 77 is a
# failure, and a declared skip names its reason (a failure under CI=true).
#
#   runner_selftest.sh FAILING_BINARY SKIP_LIB
set -uo pipefail
failing=$1 skiplib=$2
failures=0
expect() { # name wanted got
  if [[ $2 == "$3" ]]; then echo "ok: $1"; else echo "FAIL: $1: exit status $3, wanted $2"; failures=$((failures + 1)); fi
}

rc=0; "$failing" >/dev/null 2>&1 || rc=$?
expect "a binary with 77 failed assertions exits 1" 1 "$rc"

rc=0; bash -c 'source "$1"; trap "finish_status \$?" EXIT; exit 77' _ "$skiplib" >/dev/null || rc=$?
expect "a shell test's undeclared exit 77 is a failure" 1 "$rc"

out=$(CI= bash -c 'source "$1"; trap "finish_status \$?" EXIT; skip "no frobnicator here"' _ "$skiplib")
rc=$?
expect "a declared skip exits 77" 77 "$rc"
[[ $out == "COURING-SKIP: no frobnicator here" ]] && echo "ok: the skip names its reason" ||
  { echo "FAIL: skip printed '$out'"; failures=$((failures + 1)); }

rc=0; CI=true bash -c 'source "$1"; trap "finish_status \$?" EXIT; skip "no frobnicator here"' _ "$skiplib" >/dev/null || rc=$?
expect "under CI=true a missing prerequisite fails" 1 "$rc"

echo "runner self-test: $failures failure(s)"
[[ $failures == 0 ]]

# Sourced by the shell tests: the one way they may skip.
#
# meson reads exit status 77 as "skipped", so a stray 77 (from a command run
# under `set -e`, say) would turn a failure into a skip. A test that cannot
# run calls `skip REASON` (exit 77) or, when only a part of it cannot run,
# `skip_part REASON` (it goes on); both print "COURING-SKIP: REASON", which
# scripts/dev's run_tests lists in its summary. Any other exit status 77 is
# turned into 1 by `finish_status`, which each test's EXIT trap calls last.
# Under CI (CI=true) a missing prerequisite is a failure, not a skip: CI
# installs everything the tests use.

couring_skip_declared=0

skip() { # reason...
  if [[ ${CI:-} == true ]]; then
    echo "FAIL: CI=true, and a prerequisite is missing: $*"
    couring_skip_declared=0
    exit 1
  fi
  echo "COURING-SKIP: $*"
  couring_skip_declared=1
  exit 77
}

skip_part() { # reason...; returns 1 under CI (the caller counts a failure)
  if [[ ${CI:-} == true ]]; then
    echo "FAIL: CI=true, and a prerequisite is missing: $*"
    return 1
  fi
  echo "COURING-SKIP: $*"
}

finish_status() { # exit status of the script
  if [[ $1 == 77 && $couring_skip_declared != 1 ]]; then
    echo "exit status 77 without a declared skip: reported as a failure"
    exit 1
  fi
  exit "$1"
}

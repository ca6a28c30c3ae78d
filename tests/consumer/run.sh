#!/usr/bin/env bash
# Builds tests/consumer against this checkout as subprojects/couring, the way a
# user's project would, and runs it.
set -euo pipefail
# A stray exit status 77 must not read as "skipped" (tests/skip.sh).
# shellcheck source=../skip.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../skip.sh"
src=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rc=$?; rm -rf "$work"; finish_status $rc' EXIT
cp "$src/tests/consumer/meson.build" "$src/tests/consumer/consumer.cpp" "$work/"
mkdir -p "$work/subprojects"
ln -s "$src" "$work/subprojects/couring"
cd "$work"
meson setup build -Dcouring:tests=false -Dcouring:benchmarks=false -Dcouring:examples=false >setup.log 2>&1 \
  || { cat setup.log; exit 1; }
ninja -C build >build.log 2>&1 || { cat build.log; exit 1; }
./build/consumer

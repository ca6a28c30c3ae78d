#!/usr/bin/env bash
# meson install into a scratch root, then build a program against it through
# pkg-config only, and run it.
#
#   install.sh BUILD_DIR CONSUMER_SOURCE
set -euo pipefail
# A stray exit status 77 must not read as "skipped" (tests/skip.sh).
# shellcheck source=skip.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/skip.sh"
build=$1 source=$2
root=$(mktemp -d)
trap 'rc=$?; rm -rf "$root"; finish_status $rc' EXIT
meson install -C "$build" --destdir "$root" --no-rebuild --quiet >/dev/null
pc=$(find "$root" -name couring.pc | head -1)
[[ -n $pc ]] || { echo "couring.pc not installed"; exit 1; }
[[ -n $(find "$root" -path '*/include/couring/couring.hpp') ]] || { echo "headers not installed"; exit 1; }
[[ -n $(find "$root" -name 'libcouring.*') ]] || { echo "library not installed"; exit 1; }
echo "installed: $(cd "$root" && find . -name couring.pc -o -name 'libcouring.*' | sort | tr '\n' ' ')"
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$root
flags=$(pkg-config --cflags --libs couring)
echo "pkg-config --cflags --libs couring: $flags"
# shellcheck disable=SC2086
c++ -std=c++20 -O1 "$source" $flags -o "$root/consumer"
"$root/consumer"

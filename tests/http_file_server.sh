#!/usr/bin/env bash
# examples/http_file_server as users run it, checked with curl and raw sockets
# (tests/http_probe.py): statuses, bodies (sha256 of a 100 MiB file), ranges,
# conditional requests, traversal attempts, keep-alive, pipelining, 500
# concurrent clients, slowloris, a client that never reads, the connection
# limit, and SIGTERM with a request in flight. 127.0.0.1 only, bounded in time.
#
#   http_file_server.sh HTTP_FILE_SERVER PROBE_PY
set -euo pipefail
server=$1 probe=$2
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
command -v curl >/dev/null || { echo "curl is required (apt-get install curl)"; exit 1; }

fails=0
check() { # NAME EXPECTED ACTUAL
  if [[ $2 == "$3" ]]; then
    echo "ok   $1"
  else
    echo "FAIL $1: expected '$2', got '$3'"
    fails=$((fails + 1))
  fi
}

# --- the tree --------------------------------------------------------------------
root=$work/root
mkdir -p "$root/dir/sub" "$root/empty" "$root/index-dir"
echo "secret outside the root" >"$work/secret.txt"
head -c $((100 << 20)) /dev/urandom >"$root/big.bin"
printf 'hello, world\n' >"$root/a.txt"
head -c 1024 /dev/urandom >"$root/1k.bin"
echo '<h1>index</h1>' >"$root/index-dir/index.html"
echo 'nested' >"$root/dir/sub/n.txt"
ln -s /etc/passwd "$root/escape-abs"
ln -s ../secret.txt "$root/escape-rel"
ln -s dir/sub/n.txt "$root/inside-link"
touch -d '2020-01-02 03:04:05 UTC' "$root/a.txt"
big_sum=$(sha256sum <"$root/big.bin" | cut -d' ' -f1)

start() { # OUT-VAR ARGS... : starts a server on a free port, sets OUT-VAR to its port
  local var=$1 log
  shift
  log=$work/server-${#pids[@]}
  "$server" --root "$root" --listen 127.0.0.1:0 "$@" >"$log.out" 2>"$log.err" &
  pids+=($!)
  for _ in $(seq 1 100); do
    grep -qs '^listening on' "$log.out" && break
    sleep 0.05
  done
  local p
  p=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log.out")
  [[ -n $p ]] || { echo "the server did not say where it listens"; cat "$log.out" "$log.err"; exit 1; }
  printf -v "$var" '%s' "$p"
}

start port --idle-timeout 1 --write-timeout 1
url=http://127.0.0.1:$port
c() { curl -s --max-time 20 --path-as-is "$@"; }
status() { c -o /dev/null -w '%{http_code}' "$@"; }

echo "== statuses and bodies"
check "GET 100 MiB, sha256" "$big_sum" "$(c "$url/big.bin" | sha256sum | cut -d' ' -f1)"
check "GET small" "hello, world" "$(c "$url/a.txt")"
check "Content-Type" "text/plain; charset=utf-8" "$(c -o /dev/null -w '%{content_type}' "$url/a.txt")"
head=$(c -I "$url/big.bin" | tr -d '\r')
check "HEAD status" "HTTP/1.1 200 OK" "$(head -1 <<<"$head")"
check "HEAD Content-Length" "Content-Length: $((100 << 20))" "$(grep '^Content-Length' <<<"$head")"
check "HEAD has no body" "0" "$(c -I -o /dev/null -w '%{size_download}' "$url/big.bin")"
lm=$(c -I "$url/a.txt" | tr -d '\r' | sed -n 's/^Last-Modified: //p')
check "Last-Modified" "Thu, 02 Jan 2020 03:04:05 GMT" "$lm"
check "If-Modified-Since = Last-Modified: 304" 304 "$(status -H "If-Modified-Since: $lm" "$url/a.txt")"
check "304 has no body" 0 "$(c -o /dev/null -w '%{size_download}' -H "If-Modified-Since: $lm" "$url/a.txt")"
check "If-Modified-Since later: 304" 304 \
  "$(status -H 'If-Modified-Since: Fri, 01 Jan 2021 00:00:00 GMT' "$url/a.txt")"
check "If-Modified-Since earlier: 200" 200 \
  "$(status -H 'If-Modified-Since: Wed, 01 Jan 2020 00:00:00 GMT' "$url/a.txt")"
check "If-Modified-Since garbage: 200" 200 "$(status -H 'If-Modified-Since: yesterday' "$url/a.txt")"
check "Range a-b: 206" 206 "$(status -r 7-11 "$url/a.txt")"
check "Range a-b: body" "world" "$(c -r 7-11 "$url/a.txt")"
check "Range a-b: Content-Range" "Content-Range: bytes 7-11/13" \
  "$(c -r 7-11 -D - -o /dev/null "$url/a.txt" | tr -d '\r' | grep '^Content-Range')"
check "Range a-: body" "world" "$(c -r 7- "$url/a.txt" | head -c 5)"
check "Range -n: body" "$(tail -c 1000 "$root/big.bin" | sha256sum)" \
  "$(c -r -1000 "$url/big.bin" | sha256sum)"
check "Range in a big file (send_file path)" \
  "$(tail -c +1000001 "$root/big.bin" | head -c 2000000 | sha256sum)" \
  "$(c -r 1000000-2999999 "$url/big.bin" | sha256sum)"
check "Range past the end: 416" 416 "$(status -r 13- "$url/a.txt")"
check "416 Content-Range" "Content-Range: bytes */13" \
  "$(c -r 100-200 -D - -o /dev/null "$url/a.txt" | tr -d '\r' | grep '^Content-Range')"
check "Directory with index.html" "<h1>index</h1>" "$(c "$url/index-dir/")"
check "Directory without / : index.html" 200 "$(status "$url/index-dir")"
check "Directory without index.html: 404" 404 "$(status "$url/empty/")"
check "Root without index.html: 404" 404 "$(status "$url/")"
check "Missing file: 404" 404 "$(status "$url/no-such-file")"
check "Symlink inside the root: 200" "nested" "$(c "$url/inside-link")"
check "Percent-encoded name" "nested" "$(c "$url/dir/%73ub/n.txt")"
check "POST: 405" 405 "$(status -X POST -d x "$url/a.txt")"
check "405 Allow" "Allow: GET, HEAD" \
  "$(c -X DELETE -D - -o /dev/null "$url/a.txt" | tr -d '\r' | grep '^Allow')"
check "Header of 10 KiB: 431" 431 "$(status -H "X-Big: $(head -c 10000 /dev/zero | tr '\0' a)" "$url/a.txt")"
check "URI of 10 KiB: 414" 414 "$(status "$url/$(head -c 10000 /dev/zero | tr '\0' a)")"
check "Bad percent-encoding: 400" 400 "$(status "$url/%zz")"

echo "== traversal: never a byte from outside the root"
for target in /../etc/passwd /../../../../etc/passwd /%2e%2e/%2e%2e/etc/passwd \
  /dir/%2e%2e%2f%2e%2e%2fsecret.txt /escape-abs /escape-rel /a.txt%00.html /..%2fsecret.txt; do
  code=$(c -o "$work/body" -w '%{http_code}' "$url$target")
  if [[ $code == 403 || $code == 404 ]] && ! grep -q -e root: -e secret "$work/body"; then
    echo "ok   $target -> $code"
  else
    echo "FAIL $target -> $code: $(head -c 200 "$work/body")"
    fails=$((fails + 1))
  fi
done

echo "== raw requests"
raw() { # NAME STATUS PAYLOAD
  if out=$(timeout 20 python3 "$probe" "$port" raw "$2" "$3"); then echo "ok   $1"; else
    echo "FAIL $1: $out"; fails=$((fails + 1)); fi
}
raw "bad syntax: 400" 400 'GET / HTTP/1.1\r\nHost h\r\n\r\n'
raw "garbage: 400" 400 '\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\r\n\r\n'
raw "no Host: 400" 400 'GET /a.txt HTTP/1.1\r\n\r\n'
raw "NUL in the target: 400" 400 'GET /a\x00 HTTP/1.1\r\nHost: h\r\n\r\n'
raw "HTTP/2.0: 505" 505 'GET /a.txt HTTP/2.0\r\nHost: h\r\n\r\n'
raw "chunked body: 501" 501 'GET /a.txt HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
raw "absolute-form target: 200" 200 'GET http://h/a.txt HTTP/1.1\r\nHost: h\r\n\r\n'
raw "HTTP/1.0: 200" 200 'GET /a.txt HTTP/1.0\r\n\r\n'

probe_check() { # NAME ARGS...
  local name=$1
  shift
  if out=$(timeout 60 python3 "$probe" "$port" "$@"); then echo "ok   $name: $out"; else
    echo "FAIL $name: $out"; fails=$((fails + 1)); fi
}
echo "== connections"
probe_check "keep-alive" keepalive /1k.bin "$root/1k.bin"
probe_check "pipelining" pipeline /1k.bin "$root/1k.bin"
# 500 clients at once, each on its own connection.
for i in $(seq 500); do echo "url = \"$url/1k.bin?$i\""; echo "output = /dev/null"; done >"$work/urls"
codes=$(curl -s --max-time 60 --parallel --parallel-immediate --parallel-max 500 -K "$work/urls" \
  -w '%{http_code}\n' 2>/dev/null | sort | uniq -c | awk '{print $2 "x" $1}' | tr '\n' ' ')
check "500 concurrent clients" "200x500 " "$codes"
probe_check "slowloris" slowloris 1
probe_check "never reads" noread /big.bin 1 /a.txt
kill -0 "${pids[0]}" || { echo "FAIL the server died"; exit 1; }
check "still serving" 200 "$(status "$url/a.txt")"

echo "== connection limit"
start limited_port --max-connections 3
if out=$(timeout 30 python3 "$probe" "$limited_port" limit 3); then echo "ok   $out"; else
  echo "FAIL limit: $out"; fails=$((fails + 1)); fi
kill -TERM "${pids[-1]}"
server_status=0
wait "${pids[-1]}" || server_status=$?
check "exit status after SIGTERM" 0 "$server_status"

echo "== SIGTERM with a request in flight"
# A slow download (25 MiB/s: about 4 s) is in flight and an idle keep-alive
# connection is open when SIGTERM comes: the download completes, the server exits 0.
start stop_port --grace 15
curl -s --max-time 30 --limit-rate 25M "http://127.0.0.1:$stop_port/big.bin" -o "$work/slow" &
curl_pid=$!
sleep 1
kill -TERM "${pids[-1]}"
sleep 0.3
check "after SIGTERM, new connections are refused" 000 \
  "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$stop_port/a.txt" || true)"
curl_status=0
wait "$curl_pid" || curl_status=$?
check "the request in flight completed" "0 $big_sum" "$curl_status $(sha256sum <"$work/slow" | cut -d' ' -f1)"
server_status=0
timeout 20 tail --pid="${pids[-1]}" -f /dev/null || true
wait "${pids[-1]}" || server_status=$?
check "exit status after SIGTERM" 0 "$server_status"

echo "== SIGTERM on the main server"
kill -TERM "${pids[0]}"
server_status=0
wait "${pids[0]}" || server_status=$?
check "exit status" 0 "$server_status"
for log in "$work"/server-*.err; do
  if [[ -s $log ]]; then echo "FAIL the server wrote to stderr:"; cat "$log"; fails=$((fails + 1)); fi
done

if ((fails)); then
  echo "$fails check(s) failed"
  exit 1
fi
echo "http_file_server: ok"

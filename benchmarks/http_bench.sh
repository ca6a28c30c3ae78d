#!/usr/bin/env bash
# Static files over HTTP: examples/http_file_server against nginx, on 127.0.0.1 only.
#
#   benchmarks/http_bench.sh BUILD_DIR [--plot] [--duration SECONDS]
#
# BUILD_DIR holds examples/http_file_server (build it optimized). nginx (Debian
# nginx-light: one process, sendfile on, access_log off, its own config in a temp dir)
# and http_file_server serve the same files; wrk drives each with the same connections
# and duration: a 1 KiB file at 50 and 500 connections, a 1 MiB file at 50. Each run:
# 1 s of warm-up, then DURATION (default 5) measured with wrk --latency. The server is
# pinned to CPU 0 and wrk to CPU 1 (taskset), alike for both servers. Server CPU per
# request is utime+stime of the server process (all its threads, io-wq workers
# included) from /proc/PID/stat before and after, divided by the requests wrk counted.
# Runs with errors (socket errors, non-2xx responses) are marked and left out of the
# ratios. Prints a markdown table; BUILD_DIR/bench/http.json keeps the figures;
# --plot draws docs/http_performance.png with gnuplot. Exits non-zero if a run failed.
set -uo pipefail

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$script_dir")
build_dir=""
plot=0
duration=5
while (($#)); do
  case "$1" in
  --plot) plot=1 ;;
  --duration) duration=${2:?}; shift ;;
  -h | --help) usage ;;
  -*) echo "http_bench.sh: unknown option $1" >&2; usage ;;
  *) build_dir=$1 ;;
  esac
  shift
done
[[ -n $build_dir && -d $build_dir ]] || usage
build_dir=$(cd "$build_dir" && pwd)
couring_bin=$build_dir/examples/http_file_server
[[ -x $couring_bin ]] || { echo "http_bench.sh: $couring_bin is missing" >&2; exit 2; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
for tool in "$nginx_bin" wrk python3 ss; do
  command -v "$tool" >/dev/null || { echo "http_bench.sh: $tool is required" >&2; exit 2; }
done

server_pin=()
load_pin=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  server_pin=(taskset -c 0)
  load_pin=(taskset -c 1)
fi

work=$(mktemp -d /tmp/couring-http-bench.XXXXXX)
chmod 755 "$work"
server_pid=""
stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  for _ in $(seq 60); do
    kill -0 "$server_pid" 2>/dev/null || break
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

mkdir -p "$work/www" "$work/nginx-temp"
head -c 1024 /dev/urandom >"$work/www/1k.bin"
head -c $((1 << 20)) /dev/urandom >"$work/www/1m.bin"
chmod -R a+rX "$work/www"

ephemeral_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((ephemeral_low > 12000)) || ephemeral_low=32768
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    [[ -z $(ss -tanH "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
  done
  return 1
}
wait_listening() { # PORT PID
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]] && return 0
    sleep 0.05
  done
  return 1
}
cpu_ticks() { # PID -> utime + stime (clock ticks) of the whole process
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

nginx_config() { # PORT
  cat <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 100000000;
  client_body_temp_path $work/nginx-temp;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$1;
    root $work/www;
  }
}
EOF
}

start_server() { # KIND PORT
  if [[ $1 == nginx ]]; then
    nginx_config "$2" >"$work/nginx.conf"
    "${server_pin[@]}" "$nginx_bin" -c "$work/nginx.conf" -p "$work" -e "$work/nginx-error.log" \
      >"$work/server.log" 2>&1 &
  else
    "${server_pin[@]}" "$couring_bin" --root "$work/www" --listen "127.0.0.1:$2" \
      >"$work/server.log" 2>&1 &
  fi
  server_pid=$! # taskset execs the server: same pid
  wait_listening "$2" "$server_pid"
}

hz=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)"
echo "HTTP file servers on 127.0.0.1: wrk, 1 s warm-up + ${duration} s per run;" \
  "server pinned: ${server_pin[*]:-no}, wrk pinned: ${load_pin[*]:-no}"
echo "nginx: $("$nginx_bin" -v 2>&1 | sed 's/.*version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"

failed=0
cells=("1k.bin 50" "1k.bin 500" "1m.bin 50")
for cell in "${cells[@]}"; do
  read -r file conns <<<"$cell"
  # The servers take turns on each cell: a drift of the machine hits both alike.
  for kind in nginx couring; do
    out=$work/$kind-$file-$conns
    port=$(free_port) || { echo "no free port" >&2; exit 1; }
    if ! start_server "$kind" "$port"; then
      echo "$kind did not start:" >&2
      cat "$work/server.log" "$work/nginx-error.log" 2>/dev/null >&2
      stop_server
      echo "server did not start" >"$out.error"
      failed=1
      continue
    fi
    url=http://127.0.0.1:$port/$file
    timeout 30 "${load_pin[@]}" wrk -t1 -c "$conns" -d 1s "$url" >/dev/null 2>&1
    before=$(cpu_ticks "$server_pid")
    timeout $((duration + 30)) "${load_pin[@]}" wrk -t1 -c "$conns" -d "${duration}s" \
      --latency "$url" >"$out.wrk" 2>&1
    rc=$?
    after=$(cpu_ticks "$server_pid" 2>/dev/null || echo "")
    if [[ -z $after ]] || ! kill -0 "$server_pid" 2>/dev/null; then
      echo "$kind: the server died during the run" >&2
      echo "server died" >"$out.error"
      failed=1
    elif ((rc != 0)); then
      echo "wrk exit status $rc" >"$out.error"
      failed=1
    fi
    echo "$((after - before))" >"$out.cpu"
    stop_server
    printf '%-8s %-7s %4s connections: %s\n' "$kind" "$file" "$conns" \
      "$(grep -E '^Requests/sec' "$out.wrk" 2>/dev/null || echo failed)"
  done
done

mkdir -p "$build_dir/bench"
python3 - "$work" "$build_dir/bench/http.json" "$hz" "$work/plot.dat" <<'EOF' || failed=1
import json, os, re, sys

work, out_path, hz, plot_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cells = [("1k.bin", 50), ("1k.bin", 500), ("1m.bin", 50)]
label = {"1k.bin": "1 KiB", "1m.bin": "1 MiB"}

def seconds(text):  # wrk's "1.23ms" / "456.78us" / "1.02s"
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]

rows = []
for f, c in cells:
    for kind in ("nginx", "couring"):
        base = os.path.join(work, f"{kind}-{f}-{c}")
        row = {"server": kind, "file": f, "connections": c, "errors": []}
        if os.path.exists(base + ".error"):
            row["errors"].append(open(base + ".error").read().strip())
        text = open(base + ".wrk").read() if os.path.exists(base + ".wrk") else ""
        m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
        rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
        p99 = re.search(r"^\s*99%\s+(\S+)", text, re.M)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if m and rps:
            row["requests"] = int(m.group(1))
            row["requests_per_sec"] = float(rps.group(1))
        else:
            row["errors"].append("no wrk result")
        if p99:
            row["p99_ms"] = seconds(p99.group(1)) * 1e3
        if sock and any(int(x) for x in sock.groups()):
            row["errors"].append("socket errors " + "/".join(sock.groups()))
        if non2xx:
            row["errors"].append(f"{non2xx.group(1)} non-2xx")
        try:
            ticks = int(open(base + ".cpu").read())
            if row.get("requests"):
                row["cpu_us_per_request"] = ticks / hz / row["requests"] * 1e6
        except (OSError, ValueError):
            pass
        rows.append(row)
with open(out_path, "w") as fh:
    json.dump(rows, fh, indent=2)
    fh.write("\n")

def get(kind, f, c):
    return next(r for r in rows if (r["server"], r["file"], r["connections"]) == (kind, f, c))

def num(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"

print()
print("| file | conns | nginx req/s | couring req/s | ratio | nginx p99 ms | couring p99 ms | ratio "
      "| nginx CPU µs/req | couring CPU µs/req | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
with open(plot_path, "w") as plot:
    for f, c in cells:
        n, k = get("nginx", f, c), get("couring", f, c)
        clean = not n["errors"] and not k["errors"]
        def ratio(key):
            a, b = k.get(key), n.get(key)
            if not clean:
                return "errors"
            return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) and b > 0 else "-"
        print(f"| {label[f]} | {c} | {num(n.get('requests_per_sec'), '.0f')} | "
              f"{num(k.get('requests_per_sec'), '.0f')} | {ratio('requests_per_sec')} | "
              f"{num(n.get('p99_ms'), '.2f')} | {num(k.get('p99_ms'), '.2f')} | {ratio('p99_ms')} | "
              f"{num(n.get('cpu_us_per_request'), '.1f')} | "
              f"{num(k.get('cpu_us_per_request'), '.1f')} | {ratio('cpu_us_per_request')} |")
        if clean:
            plot.write(f'"{label[f]}, {c} conns" {n.get("cpu_us_per_request", 0):.3f} '
                       f'{k.get("cpu_us_per_request", 0):.3f} {n.get("requests_per_sec", 0):.0f} '
                       f'{k.get("requests_per_sec", 0):.0f}\n')
for r in rows:
    if r["errors"]:
        print(f"\n{r['server']} {r['file']} {r['connections']} connections: "
              f"ERRORS ({'; '.join(r['errors'])}): left out of the ratios")
print("\nratios are couring/nginx (CPU per request and p99: lower is better for couring)")
print(f"results: {out_path}")
sys.exit(1 if any(r["errors"] for r in rows) else 0)
EOF

if ((plot)); then
  if ! command -v gnuplot >/dev/null; then
    echo "http_bench.sh: --plot needs gnuplot (apt-get install gnuplot-nox)" >&2
    failed=1
  elif [[ ! -s $work/plot.dat ]]; then
    echo "http_bench.sh: no clean run to plot" >&2
    failed=1
  else
    terminal=png
    gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo && terminal=pngcairo
    font=""
    [[ $terminal == pngcairo ]] && font="font 'sans,10'"
    mkdir -p "$repo_root/docs"
    if gnuplot <<EOF; then
set terminal $terminal size 1200,500 noenhanced $font
set output '$repo_root/docs/http_performance.png'
set multiplot layout 1,2 title "Static files over HTTP on 127.0.0.1: wrk, ${duration} s per run, server on one CPU"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set grid ytics
set yrange [0:*]
set key top left
set title 'Server CPU per request (lower is better)'
set ylabel 'µs per request'
plot '$work/plot.dat' using 2:xtic(1) title 'nginx' lc rgb '#2471a3', '' using 3 title 'couring' lc rgb '#1e8449'
set title 'Requests per second (higher is better)'
set ylabel 'requests / s'
set format y '%.0s%c'
plot '$work/plot.dat' using 4:xtic(1) title 'nginx' lc rgb '#2471a3', '' using 5 title 'couring' lc rgb '#1e8449'
unset multiplot
EOF
      echo "plot: $repo_root/docs/http_performance.png"
    else
      echo "http_bench.sh: gnuplot failed" >&2
      failed=1
    fi
  fi
fi
((failed)) && echo "SOME RUNS FAILED" >&2
exit "$failed"

#!/usr/bin/env bash
# Instructions per request of drove's data path, counted by valgrind's callgrind: a
# measure that does not move with the machine's load (unlike CPU time), for comparing two
# builds of drove (before/after a change) on a busy or shared machine.
#
# Each binary serves N1 and then N2 requests (one worker, round robin over the same 3
# nginx backends as bench/compare.sh); instructions per request = (I(N2) - I(N1)) /
# (N2 - N1), so startup and shutdown cancel out. Scenarios: keep-alive (h2load --h1, 8
# connections) and Connection: close (a Python client, one connection per request).
#
# Usage: bench/instructions.sh BIN_A [BIN_B ...]     (release builds)
# Env:   N1=2000 N2=12000   request counts
#        SCENARIOS="keepalive close"  which scenarios to count
#        CG_DIR=dir         keep each callgrind profile there (BIN.SCENARIO.N.out), to
#                           compare functions with callgrind_annotate
set -euo pipefail

N1="${N1:-2000}"
N2="${N2:-12000}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for tool in valgrind callgrind_annotate nginx h2load python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y valgrind nginx-light nghttp2-client python3)" >&2; exit 1; }
done
TMP="$(mktemp -d -t drove-instr.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ports() {
    python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}
read -r B1 B2 B3 P A <<<"$(ports 5)"

mkdir -p "$TMP/backend"
cat >"$TMP/backend/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/backend/body;
    proxy_temp_path $TMP/backend/proxy;
    fastcgi_temp_path $TMP/backend/fastcgi;
    uwsgi_temp_path $TMP/backend/uwsgi;
    scgi_temp_path $TMP/backend/scgi;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; listen 127.0.0.1:$B3;
        location / { return 200 "ok\n"; }
    }
}
EOF
nginx -c "$TMP/backend/nginx.conf" -p "$TMP/backend" &
PIDS+=($!)

cat >"$TMP/drove.toml" <<EOF
[balancer]
listen = "127.0.0.1:$P"
workers = 1
backends = ["127.0.0.1:$B1", "127.0.0.1:$B2", "127.0.0.1:$B3"]

[admin]
listen = "127.0.0.1:$A"
EOF

close_client() {
    python3 - "$P" "$1" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    while s.recv(65536):
        pass
    s.close()
EOF
}

# Instructions of one drove run serving $2 requests of scenario $3.
count() {
    local bin="$1" n="$2" scenario="$3" out="$TMP/cg.$$.$RANDOM"
    valgrind --tool=callgrind --callgrind-out-file="$out" --trace-children=no \
        "$bin" up -c "$TMP/drove.toml" >"$TMP/drove.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    for _ in $(seq 200); do
        python3 -c "import socket;socket.create_connection(('127.0.0.1',$P)).close()" 2>/dev/null && break
        sleep 0.1
    done
    case "$scenario" in
        keepalive) h2load --h1 -n "$n" -c 8 "http://127.0.0.1:$P/" >"$TMP/load.log" 2>&1 ;;
        close) close_client "$n" ;;
    esac
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}'
    if [[ -n "${CG_DIR:-}" ]]; then
        mkdir -p "$CG_DIR"
        cp "$out" "$CG_DIR/$(basename "$bin").$scenario.$n.out"
    fi
    rm -f "$out"*
}

printf '| binary | scenario | instructions/request |\n|---|---|--:|\n'
for bin in "$@"; do
    for scenario in ${SCENARIOS:-keepalive close}; do
        a="$(count "$bin" "$N1" "$scenario")"
        b="$(count "$bin" "$N2" "$scenario")"
        per=$(( (b - a) / (N2 - N1) ))
        printf '| %s | %s | %s |\n' "$bin" "$scenario" "$per"
    done
done

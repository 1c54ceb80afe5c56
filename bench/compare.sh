#!/usr/bin/env bash
# Compare drove's load balancer with nginx and HAProxy on this machine.
#
# Every proxy runs ONE worker pinned to core 0 and balances round-robin over the same 3
# backends (a separate nginx returning "ok\n", and a 20 KB JSON document at /json); wrk
# (h2load for HTTP/2) and the backends share core 1. Scenarios: plain HTTP/1.1 keep-alive
# and close, gzip of the JSON document, TLS keep-alive / resumed / full handshakes, HTTP/2
# over TLS; all three proxies serve TLS with the same P-256 ECDSA certificate.
# Runs are interleaved (round -> scenario -> proxy) and medians are reported. Then each
# proxy is restarted and holds 10,000 idle keep-alive client connections while its RSS
# is measured. Results: bench/results/<date>-<rev>.md. See bench/README.md.
#
# Usage: bench/compare.sh [--quick] [--rounds N] [--duration SECS] [--warmup SECS]
#                         [--idle-conns N] [--out FILE] [--profile] [--no-idle]
# Env:   DROVE_BIN=path   use this drove binary instead of `cargo build --release`
#        DROVE_REV=rev    the revision DROVE_BIN was built from (default: HEAD)
#        DROVE_ALT_BIN=path  a second drove binary (another build: say, another TLS
#                         provider), run as the proxy `drove_alt` with the same configs;
#                         add it to PROXIES
#        MAX_LOAD=1.0     wait (up to LOAD_WAIT=300 s) until the 1-min load average is
#                         below this, or the CPUs were MIN_IDLE=95 % idle over 5 s,
#                         before starting; the load is recorded either way
#        KEEP_TMP=1       keep the temp dir (configs, logs, raw data)
#        GZIP_NGINX_LEVEL=2 GZIP_DROVE_LEVEL=2   gzip levels of the gzip64 scenario
#        TLS_CERT=rsa NGINX_SSL_PROTOCOLS="TLSv1.2"   TLS experiments (see README)
#        PROXIES="nginx drove" SCENARIOS="close64 tls_ka64" GENERATORS=0
#                         narrow a run while iterating (default: everything; the
#                         scenarios: ka64 ka256 close64 gzip64 tls_ka64 tls_resume64
#                         tls_close64 h2_8x8)
set -euo pipefail

ROUNDS=3
DURATION=10
WARMUP=2
IDLE_CONNS=10000
PROFILE=0
IDLE=1
QUICK=0
OUT=""
CMDLINE="bench/compare.sh $*"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; DURATION=3; WARMUP=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --idle-conns) IDLE_CONNS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --profile) PROFILE=1 ;;
        --no-idle) IDLE=0 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
NGINX="${NGINX:-/usr/sbin/nginx}"
HAPROXY="${HAPROXY:-/usr/sbin/haproxy}"
WRK="${WRK:-/usr/bin/wrk}"
H2LOAD="${H2LOAD:-/usr/bin/h2load}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
MAX_LOAD="${MAX_LOAD:-1.0}"
LOAD_WAIT="${LOAD_WAIT:-300}"
# PROXIES / SCENARIOS (space-separated) narrow a run while iterating; the committed
# results always come from the full set.
read -r -a PROXIES <<<"${PROXIES:-nginx haproxy drove}"
read -r -a SCENARIOS <<<"${SCENARIOS:-ka64 ka256 close64 gzip64 tls_ka64 tls_resume64 tls_close64 h2_8x8}"
GENERATORS="${GENERATORS:-1}"
# gzip levels of the gzip64 scenario: the same for both (bench/README.md, "gzip").
GZIP_NGINX_LEVEL="${GZIP_NGINX_LEVEL:-2}"
GZIP_DROVE_LEVEL="${GZIP_DROVE_LEVEL:-2}"
# TLS experiments (bench/README.md, "TLS"): the certificate type, and nginx's protocols
# ("TLSv1 TLSv1.1 TLSv1.2" is nginx 1.22's default, without TLS 1.3).
TLS_CERT="${TLS_CERT:-ecdsa}"
NGINX_SSL_PROTOCOLS="${NGINX_SSL_PROTOCOLS:-TLSv1.2 TLSv1.3}"

for tool in "$NGINX" "$HAPROXY" "$WRK" taskset python3 curl openssl cc; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y nginx-light haproxy wrk curl util-linux python3 openssl libssl-dev gcc)" >&2; exit 1; }
done
if [[ " ${SCENARIOS[*]} " == *" h2_8x8 "* ]]; then
    command -v "$H2LOAD" >/dev/null || { echo "missing: $H2LOAD (apt-get install -y nghttp2-client)" >&2; exit 1; }
fi

TMP="$(mktemp -d -t drove-bench.XXXXXX)"
declare -a PIDS=()

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Stop every process this script started, by PID (TERM, then KILL after 5 s).
cleanup() {
    local rc=$?
    set +e
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "temp dir kept: $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops one process we started and forgets it.
stop_pid() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# Removes a PID (of a process that has exited) from the cleanup list.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" != "$1" ]] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Raise the fd limit for everything started from here (proxies, wrk, the idle client).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
NOFILE="$(ulimit -n)"

# Free TCP ports on loopback, picked by the kernel.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r B1 B2 B3 P_NGINX P_HAPROXY P_DROVE P_ADMIN P_NGINX_TLS P_HAPROXY_TLS P_DROVE_TLS P_ADMIN_TLS \
    P_ALT P_ALT_ADMIN P_ALT_TLS P_ALT_TLS_ADMIN <<<"$(free_ports 15)"
PORT_nginx=$P_NGINX
PORT_haproxy=$P_HAPROXY
PORT_drove=$P_DROVE
# TLS listeners: nginx and HAProxy serve them from the same process as the plain ones;
# drove has one listener per process, so a second drove (drove_tls) serves TLS.
TLSPORT_nginx=$P_NGINX_TLS
TLSPORT_haproxy=$P_HAPROXY_TLS
TLSPORT_drove=$P_DROVE_TLS
PORT_drove_alt=$P_ALT
TLSPORT_drove_alt=$P_ALT_TLS

# ----------------------------------------------------------------------------- drove
if [[ -n "${DROVE_BIN:-}" ]]; then
    DROVE="$DROVE_BIN"
else
    log "building drove (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    DROVE="$ROOT/target/release/drove"
fi
[[ -x "$DROVE" ]] || { echo "drove binary not found: $DROVE" >&2; exit 1; }
if [[ " ${PROXIES[*]} " == *" drove_alt "* ]]; then
    [[ -x "${DROVE_ALT_BIN:-}" ]] || { echo "PROXIES has drove_alt: set DROVE_ALT_BIN to a drove binary" >&2; exit 1; }
fi

# ----------------------------------------------------------------------------- configs
mkdir -p "$TMP/backend/logs" "$TMP/backend/www" "$TMP/nginx/logs" "$TMP/haproxy" "$TMP/drove" "$TMP/drove_tls" "$TMP/tls"

# One P-256 ECDSA self-signed certificate, used by all three proxies (HAProxy wants the
# certificate and the key in one file). TLS_CERT=rsa (RSA 2048) is for experiments.
if [[ $TLS_CERT == rsa ]]; then
    newkey=(-newkey rsa:2048)
else
    newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
fi
openssl req -x509 "${newkey[@]}" -nodes -days 2 \
    -subj /CN=localhost -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" 2>/dev/null
cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" >"$TMP/tls/haproxy.pem"

# The wrk shim that counts handshakes (full / resumed) and can forbid resumption.
cc -O2 -shared -fPIC -o "$TMP/wrk_tls.so" "$BENCH/wrk_tls.c" -ldl -lssl

# The JSON document the gzip scenario fetches: ~20 KB of API-like records (ids, names,
# timestamps, tags, prices), deterministic, so every run compresses the same bytes.
python3 - "$TMP/backend/www/data.json" <<'EOF'
import json, random, sys
rnd = random.Random(11)
words = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray").split()
items, doc = [], ""
while True:
    i = len(items)
    items.append({
        "id": 100000 + i * 7 + rnd.randrange(7),
        "name": " ".join(rnd.choice(words).capitalize() for _ in range(2)),
        "email": "%s.%s%d@example.com" % (rnd.choice(words), rnd.choice(words), rnd.randrange(1000)),
        "created": "2026-%02d-%02dT%02d:%02d:%02dZ" % (rnd.randrange(1, 13), rnd.randrange(1, 29),
                                                     rnd.randrange(24), rnd.randrange(60), rnd.randrange(60)),
        "active": rnd.random() < 0.8,
        "score": round(rnd.uniform(0, 100), 2),
        "tags": rnd.sample(words, rnd.randrange(1, 4)),
        "price": {"amount": rnd.randrange(100, 100000), "currency": rnd.choice(["EUR", "USD", "GBP"])},
    })
    nxt = json.dumps({"page": 1, "per_page": len(items), "items": items}, indent=1)
    if len(nxt) > 20000:
        break
    doc = nxt
open(sys.argv[1], "w").write(doc + "\n")
EOF
JSON_BYTES="$(stat -c %s "$TMP/backend/www/data.json")"
# Run as root, nginx's workers are `nobody`: they must be able to read the document
# (mktemp -d makes the temp dir 0700).
chmod a+rx "$TMP" "$TMP/backend" "$TMP/backend/www"
chmod a+r "$TMP/backend/www/data.json"

# Backends: one nginx (2 workers, core 1) answering "ok\n" on 3 ports.
cat >"$TMP/backend/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/logs/error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $TMP/backend/body;
    proxy_temp_path $TMP/backend/proxy;
    fastcgi_temp_path $TMP/backend/fastcgi;
    uwsgi_temp_path $TMP/backend/uwsgi;
    scgi_temp_path $TMP/backend/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    default_type text/plain;
    server {
        listen 127.0.0.1:$B1 backlog=4096;
        listen 127.0.0.1:$B2 backlog=4096;
        listen 127.0.0.1:$B3 backlog=4096;
        location / { return 200 "ok\n"; }
        location = /json {
            default_type application/json;
            alias $TMP/backend/www/data.json;
        }
    }
}
EOF

# nginx as the load balancer. The proxy_set_header lines add the same headers drove adds
# by default (X-Forwarded-For/-Proto/-Host, X-Real-IP, X-Request-Id both ways; Host passed
# through), so all three proxies do the same header work. They are set at the http level
# and inherited by every location (the same configuration as one location, merged at
# start). The second server is the TLS listener: nginx 1.22's default ssl_protocols has
# no TLS 1.3 (1.23.4 added it), so it is named, to offer what HAProxy and drove offer.
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    upstream backends {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
        server 127.0.0.1:$B3;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$remote_addr;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$http_host;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Request-Id \$request_id;
    add_header X-Request-Id \$request_id always;
    proxy_connect_timeout 1s;
    proxy_read_timeout 60s;
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096 deferred;
        location / {
            proxy_pass http://backends;
        }
        # gzip scenario: JSON only, from 1 KiB (drove's min_size), at GZIP_NGINX_LEVEL.
        location = /json {
            proxy_pass http://backends;
            gzip on;
            gzip_comp_level $GZIP_NGINX_LEVEL;
            gzip_types application/json;
            gzip_min_length 1024;
            gzip_proxied any;
            gzip_vary on;
        }
    }
    server {
        listen 127.0.0.1:$P_NGINX_TLS ssl http2 backlog=4096 deferred;
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        ssl_protocols $NGINX_SSL_PROTOCOLS;
        location / {
            proxy_pass http://backends;
        }
    }
}
EOF

# The body of a HAProxy frontend: the same header work as drove's defaults (and nginx's
# proxy_set_header lines), for X-Forwarded-Proto $1.
haproxy_frontend() {
    cat <<FRONTEND
    maxconn 15000
    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto $1
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Request-Id %[unique-id]
    http-response set-header X-Request-Id %[unique-id]
    default_backend be
FRONTEND
}

cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 15000
    # Needed where the fd hard limit is < 2 x maxconn (non-root, containers): the idle
    # test holds 10,000 client conns, which need only ~10,100 fds.
    no strict-limits
    pidfile $TMP/haproxy/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    retries 2

frontend fe
    bind 127.0.0.1:$P_HAPROXY defer-accept
$(haproxy_frontend http)

# TLS listener (HAProxy 2.6 defaults: TLS 1.2 and 1.3, OpenSSL's suites, session cache
# and tickets on).
frontend fe_tls
    bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $TMP/tls/haproxy.pem alpn h2,http/1.1 defer-accept
$(haproxy_frontend https)

backend be
    balance roundrobin
    # gzip scenario: only JSON is compressed (the "ok\n" answers are text/plain). This
    # HAProxy is built with libslz (USE_SLZ), which has no levels: its output is about
    # zlib level 1's size.
    compression algo gzip
    compression type application/json
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
    server b3 127.0.0.1:$B3
EOF

# The gzip route only when the gzip scenario runs: without it, the config is one that a
# drove from before compression can run too (DROVE_ALT_BIN=an older build).
GZIP_ROUTE=""
if [[ " ${SCENARIOS[*]} " == *" gzip64 "* ]]; then
    # The JSON path only, at GZIP_DROVE_LEVEL (bench/README.md, "gzip").
    GZIP_ROUTE="
[[balancer.routes]]
path = \"/json\"
compress = { algorithms = [\"gzip\"], level = { gzip = $GZIP_DROVE_LEVEL } }
"
fi
# The [balancer] settings both droves share (listen PORT).
drove_balancer() {
    cat <<EOF
[balancer]
listen = "127.0.0.1:$1"
workers = 1
backends = ["127.0.0.1:$B1", "127.0.0.1:$B2", "127.0.0.1:$B3"]
algorithm = "round_robin"
access_log = "off"
timeouts = { connect = "1s", header = "10s", response = "60s", idle = "60s" }
defer_accept = true
EOF
}
{
    drove_balancer "$P_DROVE"
    cat <<EOF
$GZIP_ROUTE
[admin]
listen = "127.0.0.1:$P_ADMIN"
EOF
} >"$TMP/drove/drove.toml"

# The TLS listener: a second drove (one listener per drove), the same settings plus tls.
{
    drove_balancer "$P_DROVE_TLS"
    cat <<EOF
tls = { cert = "$TMP/tls/cert.pem", key = "$TMP/tls/key.pem" }

[admin]
listen = "127.0.0.1:$P_ADMIN_TLS"
EOF
} >"$TMP/drove_tls/drove.toml"

# drove_alt (DROVE_ALT_BIN): the same two configs on their own ports.
mkdir -p "$TMP/drove_alt" "$TMP/drove_alt_tls"
sed -e "s/:$P_DROVE\"/:$P_ALT\"/" -e "s/:$P_ADMIN\"/:$P_ALT_ADMIN\"/" "$TMP/drove/drove.toml" >"$TMP/drove_alt/drove.toml"
sed -e "s/:$P_DROVE_TLS\"/:$P_ALT_TLS\"/" -e "s/:$P_ADMIN_TLS\"/:$P_ALT_TLS_ADMIN\"/" "$TMP/drove_tls/drove.toml" >"$TMP/drove_alt_tls/drove.toml"

# ----------------------------------------------------------------------------- processes
declare -A PID_OF=()

start_bg() { # name cpu cmd...
    local name="$1" cpu="$2"; shift 2
    taskset -c "$cpu" "$@" >"$TMP/$name.out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    PID_OF[$name]=$pid
}

wait_http() { # port
    local port="$1"
    for _ in $(seq 100); do
        if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on 127.0.0.1:$port" >&2
    return 1
}

wait_https() { # port
    local port="$1"
    for _ in $(seq 100); do
        if curl -kfs -o /dev/null --max-time 1 "https://127.0.0.1:$port/"; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on https://127.0.0.1:$port" >&2
    return 1
}

start_proxy() { # name
    case "$1" in
        nginx) start_bg nginx "$PROXY_CPU" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" ;;
        haproxy) start_bg haproxy "$PROXY_CPU" "$HAPROXY" -db -f "$TMP/haproxy/haproxy.cfg" ;;
        drove) start_bg drove "$PROXY_CPU" "$DROVE" up -c "$TMP/drove/drove.toml" ;;
        drove_tls) start_bg drove_tls "$PROXY_CPU" "$DROVE" up -c "$TMP/drove_tls/drove.toml" ;;
        drove_alt) start_bg drove_alt "$PROXY_CPU" "$DROVE_ALT_BIN" up -c "$TMP/drove_alt/drove.toml" ;;
        drove_alt_tls) start_bg drove_alt_tls "$PROXY_CPU" "$DROVE_ALT_BIN" up -c "$TMP/drove_alt_tls/drove.toml" ;;
    esac
    if [[ $1 == *_tls ]]; then
        local v="TLSPORT_${1%_tls}"
        wait_https "${!v}" || { cat "$TMP/$1.out" >&2; exit 1; }
        return
    fi
    local port_var="PORT_$1" tls_var="TLSPORT_$1"
    wait_http "${!port_var}" || { cat "$TMP/$1.out" >&2; exit 1; }
    wait_https "${!tls_var}" || { cat "$TMP/$1.out" >&2; exit 1; }
}

is_tls() { [[ $1 == tls_* || $1 == h2_* ]]; }

# The port and the process (tree) a scenario loads for a proxy.
port_of() { # scenario proxy
    local v="PORT_$2"
    is_tls "$1" && v="TLSPORT_$2"
    echo "${!v}"
}
pid_of() { # scenario proxy
    if is_tls "$1" && [[ $2 == drove* ]]; then echo "${PID_OF[${2}_tls]}"; else echo "${PID_OF[$2]}"; fi
}

# A process and all its descendants (nginx master + workers).
proc_tree() {
    local pid="$1" c
    echo "$pid"
    if [[ -r /proc/$pid/task/$pid/children ]]; then
        for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do proc_tree "$c"; done
    else
        for c in $(ps -o pid= --ppid "$pid" 2>/dev/null); do proc_tree "$c"; done
    fi
}

# utime+stime (clock ticks) summed over a process tree.
cpu_ticks() {
    local total=0 p stat rest
    for p in $(proc_tree "$1"); do
        stat="$(cat /proc/"$p"/stat 2>/dev/null)" || continue
        rest="${stat##*) }"             # fields from 3 (state) on
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))  # fields 14 and 15: utime, stime
    done
    echo "$total"
}

# VmRSS (kB) summed over a process tree.
rss_kb() {
    local total=0 p v
    for p in $(proc_tree "$1"); do
        v="$(awk '/^VmRSS:/ {print $2}' /proc/"$p"/status 2>/dev/null)" || continue
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# One load run. TLS runs go through bench/wrk_tls.c, which writes the handshakes it
# made (full / resumed, protocol, suite, group) to OUTFILE.tls.
run_wrk() { # scenario port duration outfile
    local sc="$1" port="$2" d="$3" out="$4"
    local -a args=(-t1 -c64 "-d${d}s" --latency) env=()
    local url="http://127.0.0.1:$port/"
    case "$sc" in
        ka64) ;;
        ka256) args=(-t1 -c256 "-d${d}s" --latency) ;;
        close64) args+=(-H "Connection: close") ;;   # wrk needs ": " between name and value
        gzip64) args+=(-H "Accept-Encoding: gzip"); url="http://127.0.0.1:$port/json" ;;
        tls_ka64) url="https://127.0.0.1:$port/" ;;
        # wrk resumes the previous session on every reconnect (SSL_clear keeps it).
        tls_resume64) args+=(-H "Connection: close"); url="https://127.0.0.1:$port/" ;;
        # A full handshake per request: the shim drops the session before each connect.
        tls_close64) args+=(-H "Connection: close"); url="https://127.0.0.1:$port/"; env=(WRK_TLS_NO_RESUME=1) ;;
        h2_8x8)
            # HTTP/2 over TLS: 8 connections x 8 concurrent streams = 64 requests in flight.
            taskset -c "$LOAD_CPU" "$H2LOAD" -t1 -c8 -m8 -D "$d" "https://127.0.0.1:$port/" >"$out" 2>&1
            return ;;
    esac
    if is_tls "$sc"; then
        env+=(LD_PRELOAD="$TMP/wrk_tls.so" WRK_TLS_STATS="$out.tls")
    fi
    env "${env[@]}" taskset -c "$LOAD_CPU" "$WRK" "${args[@]}" "$url" >"$out" 2>&1
}

# ----------------------------------------------------------------------------- load check
# Share of CPU time idle over the next 5 s (from /proc/stat), in percent.
idle_pct() {
    local a b
    a=($(head -1 /proc/stat)); sleep 5; b=($(head -1 /proc/stat))
    awk -v i1="${a[4]}" -v i2="${b[4]}" -v t1="$(IFS=+; echo $((${a[*]:1})))" -v t2="$(IFS=+; echo $((${b[*]:1})))" \
        'BEGIN { d = t2 - t1; if (d <= 0) d = 1; printf "%d", 100 * (i2 - i1) / d }'
}

# Waits (up to LOAD_WAIT s) until the 1-min load average is below MAX_LOAD, or the
# machine was at least MIN_IDLE % idle over 5 s (the load average lags behind).
wait_for_load() {
    local waited=0 idle
    while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
        idle="$(idle_pct)"
        if (( idle >= ${MIN_IDLE:-95} )); then
            log "load average $(load1) > $MAX_LOAD but ${idle}% idle over 5 s: starting"
            return
        fi
        if (( waited >= LOAD_WAIT )); then
            log "load average still $(load1) > $MAX_LOAD after ${LOAD_WAIT}s; running anyway (recorded)"
            return
        fi
        log "load average $(load1) > $MAX_LOAD, ${idle}% idle; waiting ($waited/${LOAD_WAIT}s)"
        sleep 10
        waited=$((waited + 15))
    done
}

CLK_TCK="$(getconf CLK_TCK)"
{
    echo "date	$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    # With DROVE_BIN, say which revision it was built from (DROVE_REV); default: HEAD.
    echo "rev	${DROVE_REV:-$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    echo "dirty	$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -v '^??' | grep -c . || true)"
    echo "nproc	$(nproc)"
    echo "cpu	$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel	$(uname -sr)"
    echo "nginx	$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
    echo "haproxy	$("$HAPROXY" -v 2>&1 | head -1)"
    echo "wrk	$("$WRK" -v 2>&1 | head -1)"
    echo "h2load	$("$H2LOAD" --version 2>&1 | head -1)"
    echo "openssl	$(openssl version 2>&1 | head -1)"
    echo "json_bytes	$JSON_BYTES"
    echo "gzip_levels	nginx $GZIP_NGINX_LEVEL, drove $GZIP_DROVE_LEVEL"
    echo "tls_cert	$TLS_CERT"
    echo "drove	$("$DROVE" --version 2>&1 | head -1)"
    echo "drove_bin	$DROVE, built $(date -u -r "$DROVE" '+%Y-%m-%d %H:%M:%S UTC'), sha256 $(sha256sum "$DROVE" | cut -c1-12)"
    if [[ " ${PROXIES[*]} " == *" drove_alt "* ]]; then
        echo "drove_alt_bin	$DROVE_ALT_BIN, built $(date -u -r "$DROVE_ALT_BIN" '+%Y-%m-%d %H:%M:%S UTC'), sha256 $(sha256sum "$DROVE_ALT_BIN" | cut -c1-12)${DROVE_ALT_NOTE:+: $DROVE_ALT_NOTE}"
    fi
    # Uncommitted changes in the tree now; with DROVE_BIN, the binary may predate them
    # (DROVE_TREE_NOTE can say what it was built from).
    if [[ -n "${DROVE_TREE_NOTE:-}" ]]; then
        echo "dirty_files	$DROVE_TREE_NOTE"
    else
        echo "dirty_files	$(cd "$ROOT" && git status --porcelain -- crates src Cargo.toml Cargo.lock 2>/dev/null | grep -v '^??' | awk '{print $2}' | paste -sd' ' -)${DROVE_BIN:+ (tree at run time; DROVE_BIN was built separately)}"
    fi
    echo "cmdline	$CMDLINE"
    echo "rounds	$ROUNDS"
    echo "duration	$DURATION"
    echo "warmup	$WARMUP"
    echo "quick	$QUICK"
    echo "nofile	$NOFILE"
    echo "clk_tck	$CLK_TCK"
    echo "idle_conns	$IDLE_CONNS"
} >"$TMP/meta.tsv"

wait_for_load
echo "load_start	$(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/meta.tsv"
echo "top_start	$(top -bn2 -d1 | grep '^%Cpu' | tail -1)" >>"$TMP/meta.tsv"

# ----------------------------------------------------------------------------- load runs
log "backends on 127.0.0.1:$B1,$B2,$B3 (nginx, core $LOAD_CPU)"
start_bg backend "$LOAD_CPU" "$NGINX" -p "$TMP/backend" -c "$TMP/backend/nginx.conf"
wait_http "$B1"; wait_http "$B2"; wait_http "$B3"

for p in "${PROXIES[@]}"; do
    log "starting $p on 127.0.0.1:$(v=PORT_$p; echo "${!v}"), TLS on $(v=TLSPORT_$p; echo "${!v}") (core $PROXY_CPU)"
    [[ $p == drove* ]] && start_proxy "${p}_tls"
    start_proxy "$p"
done

# What each proxy answers in the gzip scenario (once, with curl): the bytes of the body
# on the wire and its Content-Encoding, and whether it decompresses to the backend's
# document.
printf 'proxy\tbody_bytes\theader_bytes\tencoding\tdecodes_ok\n' >"$TMP/gzip.tsv"
printf 'backend\t%s\t0\tidentity\tyes\n' "$JSON_BYTES" >>"$TMP/gzip.tsv"
for p in "${PROXIES[@]}"; do
    port="$(port_of gzip64 "$p")"
    sizes="$(curl -s -H 'Accept-Encoding: gzip' -D "$TMP/gzip-$p.head" -o "$TMP/gzip-$p.body" \
        -w '%{size_download}\t%{size_header}' "http://127.0.0.1:$port/json")"
    enc="$(awk -F': *' 'tolower($1)=="content-encoding" {gsub("\r",""); print $2}' "$TMP/gzip-$p.head")"
    ok=no
    if [[ $enc == gzip ]] && gzip -dc <"$TMP/gzip-$p.body" | cmp -s - "$TMP/backend/www/data.json"; then ok=yes; fi
    printf '%s\t%s\t%s\t%s\n' "$p" "$sizes" "${enc:-identity}" "$ok" >>"$TMP/gzip.tsv"
done

# What each proxy negotiates with an OpenSSL client (openssl s_client, the library wrk
# and h2load use): protocol, suite, key exchange, ALPN, and whether a second connection
# with the first one's session is resumed. The session is saved from an HTTP/1.0
# exchange read to the end (-ign_eof), so the TLS 1.3 tickets, sent after the
# handshake, have arrived (an s_client that closes at once may leave without one).
printf 'proxy\tprotocol\tcipher\tkex\talpn\tresumed\n' >"$TMP/tls.tsv"
for p in "${PROXIES[@]}"; do
    port="$(port_of tls_ka64 "$p")"
    openssl s_client -connect "127.0.0.1:$port" -servername localhost -alpn h2,http/1.1 \
        </dev/null >"$TMP/s_client-$p.txt" 2>&1 || true
    printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' | openssl s_client -connect "127.0.0.1:$port" \
        -servername localhost -alpn http/1.1 -ign_eof -sess_out "$TMP/sess-$p.pem" >/dev/null 2>&1 || true
    printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' | openssl s_client -connect "127.0.0.1:$port" \
        -servername localhost -alpn http/1.1 -ign_eof -sess_in "$TMP/sess-$p.pem" >"$TMP/s_client2-$p.txt" 2>&1 || true
    python3 "$BENCH/report.py" parse-s-client "$TMP/s_client-$p.txt" "$TMP/s_client2-$p.txt" "$p" >>"$TMP/tls.tsv"
done

printf 'round\tscenario\tproxy\trps\tp50_ms\tp99_ms\trequests\terrors\tcpu_ticks\tload1\n' >"$TMP/runs.tsv"
printf 'round\tscenario\tproxy\tfull\tresumed\tprotocol\tcipher\tgroup\n' >"$TMP/handshakes.tsv"
for round in $(seq "$ROUNDS"); do
    for sc in "${SCENARIOS[@]}"; do
        for p in "${PROXIES[@]}"; do
            port="$(port_of "$sc" "$p")"
            pid="$(pid_of "$sc" "$p")"
            run_wrk "$sc" "$port" "$WARMUP" "$TMP/warm.txt"
            before="$(cpu_ticks "$pid")"
            l="$(load1)"
            out="$TMP/wrk-$round-$sc-$p.txt"
            run_wrk "$sc" "$port" "$DURATION" "$out"
            after="$(cpu_ticks "$pid")"
            python3 "$BENCH/report.py" parse-wrk "$out" "$round" "$sc" "$p" "$((after - before))" "$l" >>"$TMP/runs.tsv"
            if [[ -s "$out.tls" ]]; then
                printf '%s\t%s\t%s\t%s\n' "$round" "$sc" "$p" "$(cat "$out.tls")" >>"$TMP/handshakes.tsv"
            fi
            log "round $round $sc $p: $(tail -1 "$TMP/runs.tsv" | cut -f4,6,8 | tr '\t' ' ') (req/s p99ms errors)"
        done
    done
done
echo "load_end	$(cut -d' ' -f1-3 /proc/loadavg)" >>"$TMP/meta.tsv"

# ----------------------------------------------------------------------------- load generators
# `drove bench` against wrk: each alone on core 0 (the proxies are idle now), straight at
# one backend on core 1, 64 keep-alive connections, interleaved. drove bench must reach at
# least wrk's request rate.
printf 'round\ttool\trps\n' >"$TMP/generators.tsv"
for round in $(seq "$ROUNDS"); do
    [[ $GENERATORS == 1 ]] || break
    taskset -c "$PROXY_CPU" "$WRK" -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$B1/" >"$TMP/gen-wrk-$round.txt" 2>&1
    rps="$(awk '/^Requests\/sec:/{print $2}' "$TMP/gen-wrk-$round.txt")"
    printf '%s\twrk\t%s\n' "$round" "${rps:-0}" >>"$TMP/generators.tsv"
    taskset -c "$PROXY_CPU" "$DROVE" bench "http://127.0.0.1:$B1/" -c 64 -d "${DURATION}s" --json --quiet \
        >"$TMP/gen-drove-$round.json" 2>/dev/null || true
    rps="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$TMP/gen-drove-$round.json" 2>/dev/null || echo 0)"
    printf '%s\tdrove bench\t%s\n' "$round" "$rps" >>"$TMP/generators.tsv"
    log "generators round $round: $(tail -2 "$TMP/generators.tsv" | cut -f2,3 | tr '\t\n' '  ')"
done

# ----------------------------------------------------------------------------- profile
# Optional: syscalls per request (strace -c) and perf stat of each proxy during a
# ka64 run. strace slows the proxy a lot: these runs are not part of the table.
if [[ $PROFILE == 1 ]]; then
    printf 'proxy\trequests\tsyscall\tcalls\n' >"$TMP/syscalls.tsv"
    for p in "${PROXIES[@]}"; do
        port_var="PORT_$p"; port="${!port_var}"
        pids="$(proc_tree "${PID_OF[$p]}" | paste -sd, -)"
        if command -v strace >/dev/null; then
            args=()
            for x in ${pids//,/ }; do args+=(-p "$x"); done
            strace -f -c -o "$TMP/strace-$p.txt" "${args[@]}" 2>/dev/null &
            spid=$!; PIDS+=("$spid")
            sleep 0.5
            run_wrk ka64 "$port" 5 "$TMP/wrk-strace-$p.txt"
            stop_pid "$spid"
            python3 "$BENCH/report.py" parse-strace "$TMP/strace-$p.txt" "$TMP/wrk-strace-$p.txt" "$p" >>"$TMP/syscalls.tsv" || true
        fi
        if command -v perf >/dev/null; then
            perf stat -e task-clock,context-switches,instructions,cycles -p "$pids" -o "$TMP/perfstat-$p.txt" -- sleep "$DURATION" &
            spid=$!; PIDS+=("$spid")
            run_wrk ka64 "$port" "$DURATION" "$TMP/wrk-perfstat-$p.txt"
            wait "$spid" 2>/dev/null || true
            forget_pid "$spid"
            # Flat profile (no call graphs: -g needs frame pointers, which the binaries
            # lack; use `--call-graph dwarf` by hand for callers).
            perf record -F 999 -p "$pids" -o "$TMP/perf-$p.data" -- sleep 5 >/dev/null 2>&1 &
            spid=$!; PIDS+=("$spid")
            run_wrk ka64 "$port" 5 "$TMP/wrk-perfrec-$p.txt"
            wait "$spid" 2>/dev/null || true
            forget_pid "$spid"
            perf report -i "$TMP/perf-$p.data" --no-children --stdio --sort dso >"$TMP/perfdso-$p.txt" 2>/dev/null || true
            perf report -i "$TMP/perf-$p.data" --no-children --stdio --sort dso,symbol 2>/dev/null \
                | grep -E '^ +[0-9]' | head -30 | cut -c1-150 >"$TMP/perftop-$p.txt" || true
        fi
    done
fi

# ----------------------------------------------------------------------------- idle conns
if [[ $IDLE == 1 ]]; then
    printf 'proxy\trss_before_kb\trss_with_kb\tok\tfailed\talive\n' >"$TMP/idle.tsv"
    for p in "${PROXIES[@]}"; do
        # Fresh process, so memory freed by the load runs does not hide the cost.
        stop_pid "${PID_OF[$p]}"
        start_proxy "$p"
        port="$(port_of ka64 "$p")"
        run_wrk ka64 "$port" 1 "$TMP/warm.txt"   # upstream pool as in a ka64 run
        sleep 1
        before="$(rss_kb "${PID_OF[$p]}")"
        python3 "$BENCH/idle_conns.py" 127.0.0.1 "$port" "$IDLE_CONNS" 4 64 >"$TMP/idle-$p.txt" 2>&1 &
        ipid=$!; PIDS+=("$ipid")
        for _ in $(seq 1200); do
            grep -q '^READY' "$TMP/idle-$p.txt" && break
            kill -0 "$ipid" 2>/dev/null || break
            sleep 0.1
        done
        sleep 2
        with="$(rss_kb "${PID_OF[$p]}")"
        wait "$ipid" || true
        forget_pid "$ipid"
        read -r _ ok failed <<<"$(grep '^READY' "$TMP/idle-$p.txt" || echo 'READY 0 0')"
        read -r _ alive <<<"$(grep '^ALIVE' "$TMP/idle-$p.txt" || echo 'ALIVE 0')"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$before" "$with" "$ok" "$failed" "$alive" >>"$TMP/idle.tsv"
        log "idle $p: RSS ${before} kB -> ${with} kB with $ok idle connections ($failed failed, $alive alive at the end)"
    done
fi

# ----------------------------------------------------------------------------- report
if [[ -z "$OUT" ]]; then
    mkdir -p "$BENCH/results"
    rev="$(awk -F'\t' '$1=="rev"{print $2}' "$TMP/meta.tsv")"
    suffix=""
    [[ $QUICK == 1 ]] && suffix="-quick"
    OUT="$BENCH/results/$(date -u +%Y-%m-%d)-$rev$suffix.md"
fi
python3 "$BENCH/report.py" render "$TMP" "$OUT"
log "wrote $OUT"

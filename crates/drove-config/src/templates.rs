//! Configs shipped in the binary: the file `drove init` writes and the built-in demo.

use crate::model::Config;

/// A fully commented drove.toml, written by `drove init`. Every key is shown: active
/// lines are a working setup, commented lines show the default or an example.
pub const INIT_TEMPLATE: &str = r#"# drove.toml: one file for your app's processes, load balancer and admin API.
# Reference: docs/configuration.md. Check it with `drove check`, run it with `drove up`.
#
# Values: durations "250ms" "2s" "1m30s" "1h" · sizes "512MiB" "10MB" or bytes ·
# percentages "20%" · addresses "127.0.0.1:8080" "[::1]:8080" ":8080" · rates "10/s" "600/m"

# ---------------------------------------------------------------------------
# Services: each [services.NAME] runs `instances` copies of `command`.
# ---------------------------------------------------------------------------
[services.web]
# Required. A string runs via `sh -c`; an array runs directly. {port} and {instance}
# are substituted; every instance also gets PORT, INSTANCE_ID, DROVE_SERVICE and
# DROVE_INSTANCE in its environment.
command = "node server.js"
instances = 3
# "auto" = free ports picked by drove; 5001 = instance k gets 5001+k-1; "none" = no port.
port = "auto"
# env = { NODE_ENV = "production" }
# cwd = "."                                  # relative to this file
#
# Traffic reaches an instance only after its ready probe passes. Exactly one of
# http (a path) | tcp (true = the instance port, or an address) | command.
# Default: a TCP connect to the instance port (none when port = "none").
# ready = { http = "/ready", interval = "500ms", timeout = "1s", start_timeout = "60s" }
#
# Liveness probe while running (default: none): an instance failing `fall` times in a
# row is replaced (a new one started and ready first, then the failing one drained and
# stopped). It is also the balancer's health check unless [balancer] sets its own, so
# interval x fall is how long a hung instance keeps getting traffic: these values take
# it out within ~3s (what `drove verify`'s freeze drill expects, < 5s).
# expect_status: default any 2xx/3xx.
# health = { http = "/health", interval = "1s", timeout = "500ms", fall = 3 }
#
# stop = { signal = "TERM", grace = "30s" }  # then SIGKILL
# restart = { policy = "always", initial_delay = "100ms", max_delay = "30s", reset_after = "30s", crashloop_after = 5 }
# max_memory = "512MiB"                      # rolling restart above this RSS
# depends_on = ["redis"]                     # started (and ready) first
# logs = { dir = ".drove/logs", max_size = "10MiB", keep = 3 }

# Shared infrastructure is just another service:
# [services.redis]
# command = "redis-server --port 6379 --save ''"
# port = "none"
# ready = { tcp = "127.0.0.1:6379" }

# ---------------------------------------------------------------------------
# The load balancer (optional section).
# ---------------------------------------------------------------------------
[balancer]
listen = "127.0.0.1:8080"
# workers = 0                                # 0 = one per core
# defer_accept = true                        # accept a connection once its request arrives
# Exactly one of `service` (balance that service's instances) or `backends`:
service = "web"
# backends = ["10.0.0.5:5000", { addr = "10.0.0.6:5000", weight = 2, backup = false, name = "b2" }]
# backends = [{ dns = "web.internal:5000" }, { srv = "_http._tcp.web.internal" }]   # re-resolved
# resolver = { nameservers = ["10.0.0.2:53"], interval = "5s" }                     # default: /etc/resolv.conf
#
# round_robin | least_conn | ip_hash | hash | random_two | p2c_ewma
algorithm = "round_robin"
# hash_key = "header:X-User-Id"              # only with algorithm = "hash": header:NAME | cookie:NAME | path | client_ip
# sticky = { cookie = "drove_sticky", max_age = "0s" }   # max_age 0 = session cookie
#
# `attempts` counts retries after the first try (0: off). Requests that never reached
# an instance are always retried; others only if idempotent, within the budget.
# retries = { attempts = 2, budget = "20%", per_try_timeout = "2s", on_5xx = false }
# passive = { max_fails = 3, fail_timeout = "10s", on_5xx = false }   # max_fails 0 = off
# Active checks of backends: a failing one leaves rotation until it passes `rise` times
# (it keeps running). Default: the service's `health` probe.
# health = { http = "/health", interval = "1s", timeout = "500ms", rise = 2, fall = 2 }
# max_ejected = "50%"                        # never eject more than this share at once
# timeouts = { connect = "1s", header = "10s", response = "60s", idle = "60s", shutdown_grace = "30s" }
#
# instance_header = "X-Drove-Instance"       # name the serving instance in responses (default off)
# trusted_proxies = ["10.0.0.0/8"]           # whose X-Forwarded-* / X-Real-IP to believe
# request_id = "X-Request-Id"                # "" = off
# access_log = "off"                         # off | combined | json
# access_log_path = "-"                      # "-" = stdout
# max_header_size = "16KiB"                  # larger: 431
# max_body_size = "0"                        # 0 = unlimited; larger: 413
# tls = { cert = "cert.pem", key = "key.pem" }   # HTTPS on `listen` (PEM files)
#
# Compress responses for clients that accept it (Accept-Encoding q-values first, then
# the order of `algorithms`). Absent or false = off; true = all the defaults shown here.
# Compressed: `types` (default: text/*, JSON, JavaScript, XML, SVG, wasm, fonts, icons),
# with a length of at least min_size or unknown (streamed); never HEAD, 204/206/304,
# already-encoded or `Cache-Control: no-transform` responses. Levels: gzip 1-9 (2 gives
# what nginx's gzip_comp_level 1 does), br 0-11, zstd 1-19.
compress = { algorithms = ["zstd", "br", "gzip"], min_size = "1KiB", level = { gzip = 2, br = 3, zstd = 3 } }
#   inside compress = { ... }: types = ["text/*", "application/json", "application/*+json", "image/svg+xml"]

# A path prefix with its own rate limit (a [limits.NAME]), compression, or both:
# [[balancer.routes]]
# path = "/auth/"
# limit = "strict"
# compress = false                           # true, false or a table like [balancer]'s, over it

# ---------------------------------------------------------------------------
# Rate limits, referenced by routes.
# ---------------------------------------------------------------------------
# [limits.strict]
# key = "client_ip"                          # client_ip | header:NAME | cookie:NAME
# rate = "10/s"
# burst = 20                                 # default: the rate's count
# redis = "redis://127.0.0.1:6379/"          # share the limit with every drove using this Redis

# ---------------------------------------------------------------------------
# Admin API, /metrics and the dashboard.
# ---------------------------------------------------------------------------
[admin]
listen = "127.0.0.1:9900"
# token = ""                                 # bearer token; set one before exposing it
"#;

/// The built-in demo as TOML, with `{drove}` standing for the drove executable
/// (as a TOML basic string's contents: escape with [`builtin_demo_toml`]). `drove up`
/// runs this when there is no drove.toml, and prints it.
pub const BUILTIN_DEMO_TOML: &str = r#"# The built-in demo: three instances of the demo app behind the balancer.
[services.web]
command = ["{drove}", "demo"]
instances = 3
port = "auto"
ready = { http = "/ready", interval = "100ms" }
# Liveness: an instance that fails 3 probes 2s apart is replaced (a new one ready first,
# then the failing one drained and stopped).
health = { http = "/health", interval = "2s", timeout = "1s", rise = 1, fall = 3 }
stop = { signal = "TERM", grace = "10s" }

[balancer]
listen = "127.0.0.1:8080"
service = "web"
algorithm = "round_robin"
instance_header = "X-Drove-Instance"
# Demo-style health: a frozen instance fails two 250ms probes and leaves rotation
# within a second; connect errors and timeouts eject it even sooner.
health = { http = "/health", interval = "250ms", timeout = "200ms", rise = 2, fall = 2 }
passive = { max_fails = 2, fail_timeout = "5s" }
# A request stuck on a frozen instance is retried elsewhere after 5s (GET and other
# idempotent requests only; a POST that reached an instance is never replayed).
retries = { attempts = 2, per_try_timeout = "5s" }
# Text responses compressed for clients that accept zstd, br or gzip (the defaults).
compress = true

[admin]
listen = "127.0.0.1:9900"
"#;

/// [`BUILTIN_DEMO_TOML`] with `{drove}` replaced by `drove_exe`, escaped for TOML.
pub fn builtin_demo_toml(drove_exe: &str) -> String {
    let mut escaped = String::with_capacity(drove_exe.len());
    for c in drove_exe.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            c if c.is_control() => escaped.push_str(&format!("\\u{:04X}", c as u32)),
            c => escaped.push(c),
        }
    }
    BUILTIN_DEMO_TOML.replace("{drove}", &escaped)
}

/// The built-in demo config (see [`BUILTIN_DEMO_TOML`]); its working directory and log
/// directory are relative to the current directory.
pub fn builtin_demo(drove_exe: &str) -> Config {
    crate::parse(&builtin_demo_toml(drove_exe), "<built-in demo>")
        .expect("the built-in demo config is valid")
}

//! `[balancer]` and `[[balancer.routes]]`.

use std::path::Path;
use std::time::Duration;

use super::compress::compress;
use super::probe::{probe, Role};
use super::{keyed, resolve, Keyed, Refs, Spanned};
use crate::model::*;
use crate::reader::{self as r, Cx, Field, Fields};
use crate::units;

const BALANCER_KEYS: &[&str] = &[
    "listen",
    "workers",
    "defer_accept",
    "service",
    "backends",
    "algorithm",
    "hash_key",
    "sticky",
    "retries",
    "passive",
    "health",
    "max_ejected",
    "timeouts",
    "instance_header",
    "trusted_proxies",
    "upgrades",
    "http2",
    "http2_max_streams",
    "request_id",
    "access_log",
    "access_log_path",
    "max_header_size",
    "max_body_size",
    "routes",
    "resolver",
    "tls",
    "compress",
];
const ALGORITHMS: &[&str] = &[
    "round_robin",
    "least_conn",
    "ip_hash",
    "hash",
    "random_two",
    "p2c_ewma",
];

/// Default name of the instance header when `instance_header = true`.
pub(crate) const DEFAULT_INSTANCE_HEADER: &str = "X-Drove-Instance";
const DEFAULT_REQUEST_ID: &str = "X-Request-Id";

pub(super) fn balancer(
    cx: &mut Cx,
    f: &Field<'_>,
    base: &Path,
    refs: &mut Refs,
) -> Option<BalancerConfig> {
    let mut t = Fields::of(cx, f, "[balancer]".into(), BALANCER_KEYS)?;
    let mut b = BalancerConfig {
        listen: ([127, 0, 0, 1], 8080).into(),
        workers: 0,
        defer_accept: true,
        backends: Backends::Static(Vec::new()),
        algorithm: Algorithm::RoundRobin,
        sticky: None,
        retries: RetryConfig {
            attempts: 2,
            budget: 0.2,
            per_try_timeout: None,
            on_5xx: false,
        },
        passive: PassiveConfig {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            on_5xx: false,
        },
        health: None,
        max_ejected: 0.5,
        timeouts: TimeoutsConfig {
            connect: Duration::from_secs(1),
            header: Duration::from_secs(10),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        },
        instance_header: None,
        trusted_proxies: Vec::new(),
        upgrades: vec!["websocket".to_string()],
        http2: true,
        http2_max_streams: 128,
        request_id: Some(DEFAULT_REQUEST_ID.to_string()),
        access_log: AccessLogFormat::Off,
        access_log_path: LogTarget::Stdout,
        max_header_size: 16 << 10,
        max_body_size: 0,
        routes: Vec::new(),
        dns_backends: Vec::new(),
        resolver: ResolverConfig {
            nameservers: Vec::new(),
            interval: Duration::from_secs(5),
        },
        tls: None,
        compress: None,
    };
    if let Some(lf) = t.get("listen") {
        if let Some(a) = r::socket_addr(cx, &lf) {
            b.listen = a;
        }
        refs.balancer_listen = Some(lf.span);
    }
    if let Some(w) = t.get("workers").and_then(|f| r::int(cx, &f, 0, 1024)) {
        b.workers = w as usize;
    }
    if let Some(d) = t.get("defer_accept").and_then(|f| r::boolean(cx, &f)) {
        b.defer_accept = d;
    }

    // Backends: exactly one of `service` | `backends`.
    match (t.get("service"), t.get("backends")) {
        (Some(sf), Some(bf)) => {
            let later = if sf.key_span.start > bf.key_span.start { &sf } else { &bf };
            cx.error(
                later.key_span.clone(),
                "`service` and `backends` are mutually exclusive in [balancer]: set one",
            );
        }
        (None, None) => cx.error(
            t.span.clone(),
            "[balancer] needs `service` (the name of a service to balance) or `backends` (a list of addresses)",
        ),
        (Some(sf), None) => {
            if let Some(s) = r::string(cx, &sf) {
                refs.balancer_service = Some(Spanned { name: s.clone(), span: sf.span.clone() });
                b.backends = Backends::Service(s);
            }
        }
        (None, Some(bf)) => {
            let (fixed, dns) = static_backends(cx, &bf);
            b.backends = Backends::Static(fixed);
            b.dns_backends = dns;
        }
    }

    let algo_field = t.get("algorithm");
    let algo = algo_field
        .as_ref()
        .and_then(|f| r::choice(cx, f, "algorithm", ALGORITHMS))
        .unwrap_or("round_robin");
    let hash_key = t.get("hash_key");
    b.algorithm = match algo {
        "least_conn" => Algorithm::LeastConn,
        "ip_hash" => Algorithm::IpHash,
        "random_two" => Algorithm::RandomTwo,
        "p2c_ewma" => Algorithm::P2cEwma,
        "hash" => match &hash_key {
            Some(hf) => Algorithm::Hash(self::hash_key(cx, hf).unwrap_or(HashKey::ClientIp)),
            None => {
                cx.error(
                    algo_field.as_ref().map_or(t.span.clone(), |f| f.span.clone()),
                    "algorithm = \"hash\" needs `hash_key`: \"header:NAME\", \"cookie:NAME\", \"path\" or \"client_ip\"",
                );
                Algorithm::Hash(HashKey::ClientIp)
            }
        },
        _ => Algorithm::RoundRobin,
    };
    if let (Some(hf), false) = (&hash_key, algo == "hash") {
        let valid_algo = algo_field
            .as_ref()
            .is_none_or(|f| f.node.as_str().is_some_and(|s| ALGORITHMS.contains(&s)));
        if valid_algo {
            cx.error(
                hf.key_span.clone(),
                format!(
                    "`hash_key` is only used with algorithm = \"hash\" (algorithm is \"{algo}\")"
                ),
            );
        }
    }

    if let Some(sf) = t.get("sticky") {
        if let Some(mut st) = Fields::of(
            cx,
            &sf,
            "`sticky` of [balancer]".into(),
            &["cookie", "max_age"],
        ) {
            let mut sticky = StickyConfig {
                cookie: "drove_sticky".into(),
                max_age: Duration::ZERO,
            };
            if let Some(cf) = st.get("cookie") {
                if let Some(c) = r::string(cx, &cf) {
                    if r::is_header_name(&c) {
                        sticky.cookie = c;
                    } else {
                        cx.error(cf.span.clone(), format!("invalid cookie name \"{c}\""));
                    }
                }
            }
            if let Some(v) = st.get("max_age").and_then(|f| r::duration(cx, &f)) {
                sticky.max_age = v;
            }
            b.sticky = Some(sticky);
        }
    }

    if let Some(rf) = t.get("retries") {
        let keys = &["attempts", "budget", "per_try_timeout", "on_5xx"];
        if let Some(mut rt) = Fields::of(cx, &rf, "`retries` of [balancer]".into(), keys) {
            if let Some(v) = rt.get("attempts").and_then(|f| r::int(cx, &f, 0, 100)) {
                b.retries.attempts = v as u32;
            }
            if let Some(v) = rt.get("budget").and_then(|f| r::percent(cx, &f)) {
                b.retries.budget = v;
            }
            if let Some(v) = rt
                .get("per_try_timeout")
                .and_then(|f| r::positive_duration(cx, &f))
            {
                b.retries.per_try_timeout = Some(v);
            }
            if let Some(v) = rt.get("on_5xx").and_then(|f| r::boolean(cx, &f)) {
                b.retries.on_5xx = v;
            }
        }
    }

    if let Some(pf) = t.get("passive") {
        let keys = &["max_fails", "fail_timeout", "on_5xx"];
        if let Some(mut pt) = Fields::of(cx, &pf, "`passive` of [balancer]".into(), keys) {
            if let Some(v) = pt.get("max_fails").and_then(|f| r::u32_at_least(cx, &f, 0)) {
                b.passive.max_fails = v;
            }
            if let Some(v) = pt
                .get("fail_timeout")
                .and_then(|f| r::positive_duration(cx, &f))
            {
                b.passive.fail_timeout = v;
            }
            if let Some(v) = pt.get("on_5xx").and_then(|f| r::boolean(cx, &f)) {
                b.passive.on_5xx = v;
            }
        }
    }

    if let Some(hf) = t.get("health") {
        refs.balancer_health_set = true;
        if hf.node.as_bool() != Some(false) {
            b.health = probe(
                cx,
                &hf,
                Role::Balancer,
                "`health` of [balancer]",
                PortSpec::Auto,
            );
        }
    }

    if let Some(v) = t.get("max_ejected").and_then(|f| r::percent(cx, &f)) {
        b.max_ejected = v;
    }

    if let Some(tf) = t.get("timeouts") {
        let keys = &["connect", "header", "response", "idle", "shutdown_grace"];
        if let Some(mut tt) = Fields::of(cx, &tf, "`timeouts` of [balancer]".into(), keys) {
            let to = &mut b.timeouts;
            for (key, slot) in [
                ("connect", &mut to.connect),
                ("header", &mut to.header),
                ("response", &mut to.response),
                ("idle", &mut to.idle),
            ] {
                if let Some(v) = tt.get(key).and_then(|f| r::positive_duration(cx, &f)) {
                    *slot = v;
                }
            }
            if let Some(v) = tt.get("shutdown_grace").and_then(|f| r::duration(cx, &f)) {
                to.shutdown_grace = v;
            }
        }
    }

    if let Some(hf) = t.get("instance_header") {
        b.instance_header = optional_header(cx, &hf, DEFAULT_INSTANCE_HEADER).unwrap_or(None);
    }
    if let Some(hf) = t.get("request_id") {
        b.request_id = optional_header(cx, &hf, DEFAULT_REQUEST_ID).unwrap_or(b.request_id);
    }

    if let Some(pf) = t.get("trusted_proxies") {
        for item in r::array(cx, &pf).unwrap_or_default() {
            if let Some(c) = r::parsed(cx, &item, "CIDR", "\"10.0.0.0/8\"", units::cidr) {
                b.trusted_proxies.push(c);
            }
        }
    }

    if let Some(v) = t.get("http2").and_then(|f| r::boolean(cx, &f)) {
        b.http2 = v;
    }
    if let Some(v) = t
        .get("http2_max_streams")
        .and_then(|f| r::int(cx, &f, 1, 65_535))
    {
        b.http2_max_streams = v as u32;
    }
    if let Some(uf) = t.get("upgrades") {
        b.upgrades.clear();
        for item in r::array(cx, &uf).unwrap_or_default() {
            let Some(p) = r::string(cx, &item) else {
                continue;
            };
            let p = p.to_ascii_lowercase();
            if p == "h2c" {
                // h2c would open HTTP/2 straight to an instance, past routes and limits.
                cx.error(
                    item.span.clone(),
                    "`h2c` cannot be tunnelled: HTTP/2 would reach the instance past drove's routes and limits",
                );
            } else if p.is_empty() || !p.bytes().all(|c| c.is_ascii_graphic() && c != b',') {
                cx.error(
                    item.span.clone(),
                    format!("`{p}` is not a protocol name (a token like \"websocket\")"),
                );
            } else {
                b.upgrades.push(p);
            }
        }
    }

    if let Some(v) = t
        .get("access_log")
        .and_then(|f| r::choice(cx, &f, "access_log", &["off", "combined", "json"]))
    {
        b.access_log = match v {
            "combined" => AccessLogFormat::Combined,
            "json" => AccessLogFormat::Json,
            _ => AccessLogFormat::Off,
        };
    }
    if let Some(pf) = t.get("access_log_path") {
        match r::string(cx, &pf).as_deref() {
            Some("-") => b.access_log_path = LogTarget::Stdout,
            Some("") => cx.error(
                pf.span.clone(),
                "`access_log_path` is empty; use \"-\" for stdout",
            ),
            Some(p) => b.access_log_path = LogTarget::File(resolve(base, p)),
            None => {}
        }
    }
    if let Some(f) = t.get("max_header_size") {
        match r::size(cx, &f) {
            Some(v) if v < 1024 => {
                cx.error(f.span.clone(), "`max_header_size` must be at least 1KiB")
            }
            Some(v) => b.max_header_size = v,
            None => {}
        }
    }
    if let Some(v) = t.get("max_body_size").and_then(|f| r::size(cx, &f)) {
        b.max_body_size = v;
    }
    if let Some(rf) = t.get("resolver") {
        resolver(cx, &rf, &mut b.resolver);
    }
    if let Some(tf) = t.get("tls") {
        b.tls = tls(cx, &tf, base);
    }
    if let Some(cf) = t.get("compress") {
        b.compress = compress(cx, &cf, None, "`compress` of [balancer]").unwrap_or(None);
    }

    if let Some(rf) = t.get("routes") {
        for item in r::array(cx, &rf).unwrap_or_default() {
            if let Some(route) = route(cx, &item, refs, b.compress.as_ref()) {
                b.routes.push(route);
            }
        }
    }
    Some(b)
}

/// `resolver = { nameservers = ["10.0.0.2:53"], interval = "5s" }`.
fn resolver(cx: &mut Cx, f: &Field<'_>, out: &mut ResolverConfig) {
    let Some(mut t) = Fields::of(cx, f, "`resolver`".into(), &["nameservers", "interval"]) else {
        return;
    };
    if let Some(nf) = t.get("nameservers") {
        if let Some(items) = r::array(cx, &nf) {
            out.nameservers = items.iter().filter_map(|i| r::socket_addr(cx, i)).collect();
        }
    }
    if let Some(d) = t.get("interval").and_then(|f| r::duration(cx, &f)) {
        if d.is_zero() {
            cx.error(f.span.clone(), "`resolver.interval` must be more than 0s");
        } else {
            out.interval = d;
        }
    }
}

/// `tls = { cert = "cert.pem", key = "key.pem" }`, relative to the config's directory;
/// both files must exist (their contents are checked when drove starts).
fn tls(cx: &mut Cx, f: &Field<'_>, base: &Path) -> Option<TlsConfig> {
    let mut t = Fields::of(cx, f, "`tls`".into(), &["cert", "key"])?;
    let mut file = |cx: &mut Cx, name: &str| {
        let ff = t.required(cx, name)?;
        let s = r::string(cx, &ff)?;
        let p = resolve(base, &s);
        if !p.is_file() {
            cx.error(
                ff.span.clone(),
                format!("`tls.{name}`: no file {}", p.display()),
            );
            return None;
        }
        Some(p)
    };
    let cert = file(cx, "cert");
    let key = file(cx, "key");
    Some(TlsConfig {
        cert: cert?,
        key: key?,
    })
}

/// A DNS name as drove accepts it: letters, digits, `-`, `_` and dots.
fn dns_name(cx: &mut Cx, f: &Field<'_>, s: &str) -> bool {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        cx.error(
            f.span.clone(),
            format!("`{s}` is not a DNS name (letters, digits, `-`, `_` and dots)"),
        );
    }
    ok
}

/// `weight`, `backup` and `name` of a `backends` table entry, over their defaults.
fn entry_options(
    cx: &mut Cx,
    t: &mut Fields<'_>,
    weight: &mut u32,
    backup: &mut bool,
    name: &mut String,
) {
    if let Some(w) = t.get("weight").and_then(|f| r::int(cx, &f, 1, 10_000)) {
        *weight = w as u32;
    }
    if let Some(v) = t.get("backup").and_then(|f| r::boolean(cx, &f)) {
        *backup = v;
    }
    if let Some(n) = t.get("name").and_then(|f| r::string(cx, &f)) {
        *name = n;
    }
}

fn static_backends(cx: &mut Cx, f: &Field<'_>) -> (Vec<StaticBackend>, Vec<DnsBackend>) {
    let mut dns: Vec<DnsBackend> = Vec::new();
    let Some(items) = r::array(cx, f) else {
        return (Vec::new(), dns);
    };
    if items.is_empty() {
        cx.error(
            f.span.clone(),
            "`backends` is empty; list at least one address",
        );
    }
    let mut out: Vec<StaticBackend> = Vec::new();
    for item in items {
        let (backend, addr_span) = if item.node.as_str().is_some() {
            let Some(addr) = r::socket_addr(cx, &item) else {
                continue;
            };
            let b = StaticBackend {
                addr,
                weight: 1,
                backup: false,
                name: addr.to_string(),
            };
            (b, item.span.clone())
        } else if item.node.is_table() {
            let keys = &["addr", "dns", "srv", "weight", "backup", "name"];
            let mut t = Fields::new(
                cx,
                &item.node,
                item.span.clone(),
                "a `backends` entry".into(),
                keys,
            );
            let (dns_f, srv_f) = (t.get("dns"), t.get("srv"));
            if dns_f.is_some() || srv_f.is_some() {
                let query = match (t.get("addr"), dns_f, srv_f) {
                    (None, Some(df), None) => {
                        let Some(s) = r::string(cx, &df) else {
                            continue;
                        };
                        let parsed = s
                            .rsplit_once(':')
                            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)));
                        match parsed {
                            Some((host, port)) if port > 0 => {
                                if !dns_name(cx, &df, &host) {
                                    continue;
                                }
                                DnsQuery::Host { host, port }
                            }
                            _ => {
                                cx.error(
                                    df.span.clone(),
                                    format!("`dns` must be NAME:PORT, e.g. \"web.internal:8080\", got \"{s}\""),
                                );
                                continue;
                            }
                        }
                    }
                    (None, None, Some(sf)) => {
                        let Some(s) = r::string(cx, &sf) else {
                            continue;
                        };
                        if !dns_name(cx, &sf, &s) {
                            continue;
                        }
                        DnsQuery::Srv(s)
                    }
                    _ => {
                        cx.error(
                            item.span.clone(),
                            "a `backends` entry has exactly one of `addr`, `dns` (NAME:PORT, A/AAAA records) or `srv` (an SRV name)",
                        );
                        continue;
                    }
                };
                let mut d = DnsBackend {
                    name: match &query {
                        DnsQuery::Host { host, .. } => host.clone(),
                        DnsQuery::Srv(s) => s.clone(),
                    },
                    query,
                    weight: 1,
                    backup: false,
                };
                entry_options(cx, &mut t, &mut d.weight, &mut d.backup, &mut d.name);
                if dns.iter().any(|o| o.query == d.query) {
                    cx.error(item.span.clone(), "duplicate DNS backend entry");
                    continue;
                }
                dns.push(d);
                continue;
            }
            let Some(af) = t.required(cx, "addr") else {
                continue;
            };
            let Some(addr) = r::socket_addr(cx, &af) else {
                continue;
            };
            let mut b = StaticBackend {
                addr,
                weight: 1,
                backup: false,
                name: addr.to_string(),
            };
            entry_options(cx, &mut t, &mut b.weight, &mut b.backup, &mut b.name);
            (b, af.span.clone())
        } else {
            cx.error(
                item.span.clone(),
                format!(
                    "a `backends` entry must be an address string or a table {{ addr = \"...\" }}, found {}",
                    item.node.type_name()
                ),
            );
            continue;
        };
        if out.iter().any(|o| o.addr == backend.addr) {
            cx.error(
                addr_span,
                format!("duplicate backend address {}", backend.addr),
            );
            continue;
        }
        out.push(backend);
    }
    (out, dns)
}

fn hash_key(cx: &mut Cx, f: &Field<'_>) -> Option<HashKey> {
    let s = r::string(cx, f)?;
    match keyed(cx, f, &s, &["path", "client_ip"])? {
        Keyed::Header(h) => Some(HashKey::Header(h)),
        Keyed::Cookie(c) => Some(HashKey::Cookie(c)),
        Keyed::Word("path") => Some(HashKey::Path),
        Keyed::Word(_) => Some(HashKey::ClientIp),
    }
}

/// A header name, `""`/`false` (off) or `true` (the default name).
fn optional_header(cx: &mut Cx, f: &Field<'_>, default: &str) -> Option<Option<String>> {
    match (f.node.as_bool(), f.node.as_str()) {
        (Some(true), _) => Some(Some(default.to_string())),
        (Some(false), _) | (_, Some("")) => Some(None),
        (_, Some(s)) if r::is_header_name(s) => Some(Some(s.to_string())),
        (_, Some(s)) => {
            cx.error(
                f.span.clone(),
                format!("`{}`: \"{s}\" is not a valid header name", f.name),
            );
            None
        }
        _ => {
            cx.error(
                f.span.clone(),
                format!(
                    "`{}` must be a header name, \"\" or a boolean, found {}",
                    f.name,
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

/// One `[[balancer.routes]]` entry; `balancer_compress` is what the route inherits.
fn route(
    cx: &mut Cx,
    f: &Field<'_>,
    refs: &mut Refs,
    balancer_compress: Option<&drove_compress::Settings>,
) -> Option<RouteConfig> {
    if !f.node.is_table() {
        cx.error(
            f.span.clone(),
            format!(
                "a route must be a table ([[balancer.routes]]), found {}",
                f.node.type_name()
            ),
        );
        return None;
    }
    let mut t = Fields::new(
        cx,
        &f.node,
        f.span.clone(),
        "[[balancer.routes]]".into(),
        &["path", "limit", "compress"],
    );
    let path = t.required(cx, "path");
    let limit = t.get("limit");
    let compress_field = t.get("compress");
    if limit.is_none() && compress_field.is_none() {
        cx.error(
            t.span.clone(),
            "a route needs `limit` (a rate limit), `compress` (compression on this path) or both",
        );
    }
    let path_ok = path.and_then(|pf| {
        let p = r::string(cx, &pf)?;
        if !p.starts_with('/') {
            cx.error(
                pf.span.clone(),
                format!("route `path` must start with `/`, found \"{p}\""),
            );
            return None;
        }
        Some(p)
    });
    let limit = match limit {
        None => Some(String::new()),
        Some(lf) => r::string(cx, &lf).inspect(|l| {
            refs.route_limits.push(Spanned {
                name: l.clone(),
                span: lf.span.clone(),
            });
        }),
    };
    let settings = match &compress_field {
        None => Some(balancer_compress.cloned()),
        Some(cf) => compress(
            cx,
            cf,
            balancer_compress,
            "`compress` of [[balancer.routes]]",
        ),
    };
    Some(RouteConfig {
        path: path_ok?,
        limit: limit?,
        compress: settings?,
    })
}

//! Stage 2 of the pipeline: the spanned `toml_edit` tree → per-section Rust values.
//! Each section reader reports its own errors and falls back to defaults so that reading
//! goes on; names that other sections refer to are kept with their spans in [`Refs`] for
//! the cross-reference checks in `check.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_edit::Table;

use crate::model::*;
use crate::placeholders;
use crate::reader::{self as r, Cx, Field, Fields, Node};
use crate::units;

const TOP_KEYS: &[&str] = &["services", "balancer", "limits", "admin"];
const SERVICE_KEYS: &[&str] = &[
    "command",
    "instances",
    "port",
    "env",
    "cwd",
    "ready",
    "health",
    "stop",
    "restart",
    "max_memory",
    "depends_on",
    "logs",
];
const BALANCER_KEYS: &[&str] = &[
    "listen",
    "workers",
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
    "request_id",
    "access_log",
    "access_log_path",
    "max_header_size",
    "max_body_size",
    "routes",
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

/// A name with the span of where it was written.
#[derive(Clone)]
pub(crate) struct Spanned {
    pub name: String,
    pub span: Range<usize>,
}

/// Names that refer to other sections, kept with spans for `check.rs`.
#[derive(Default)]
pub(crate) struct Refs {
    /// Per service (same order as `Config::services`): its name's span, its port's span.
    pub services: Vec<(Range<usize>, Range<usize>)>,
    /// Per service: its `depends_on` entries.
    pub depends_on: Vec<Vec<Spanned>>,
    pub balancer_service: Option<Spanned>,
    /// Whether `[balancer]` has a `health` key (else it defaults to the service's).
    pub balancer_health_set: bool,
    pub balancer_listen: Option<Range<usize>>,
    pub route_limits: Vec<Spanned>,
    /// Every `[limits.NAME]` declared, even one with errors (so routes naming it do not
    /// get a second, misleading "unknown limit" error).
    pub limit_names: Vec<String>,
    pub admin_listen: Option<Range<usize>>,
}

/// Reads the whole document.
pub(crate) fn config(cx: &mut Cx, root: &Table, base: &Path) -> (Config, Refs) {
    let mut refs = Refs::default();
    let mut top = Fields::new(
        cx,
        &Node::Table(root),
        0..0,
        "the top level".into(),
        TOP_KEYS,
    );
    let mut config = Config {
        services: Vec::new(),
        balancer: None,
        limits: BTreeMap::new(),
        admin: AdminConfig::default(),
        path: None,
        warnings: Vec::new(),
    };
    if let Some(f) = top.get("services") {
        if let Some(list) = named_tables(cx, &f, "services") {
            for (name, f) in list {
                if let Some(svc) = service(cx, &f, name, base, &mut refs) {
                    config.services.push(svc);
                }
            }
        }
    }
    if let Some(f) = top.get("balancer") {
        config.balancer = balancer(cx, &f, base, &mut refs);
    }
    if let Some(f) = top.get("limits") {
        if let Some(list) = named_tables(cx, &f, "limits") {
            for (name, f) in list {
                refs.limit_names.push(name.clone());
                if let Some(l) = limit(cx, &f, &name) {
                    config.limits.insert(name, l);
                }
            }
        }
    }
    if let Some(f) = top.get("admin") {
        config.admin = admin(cx, &f, &mut refs);
    }
    (config, refs)
}

/// `[services.NAME]` / `[limits.NAME]`: checks that each NAME is valid and each entry a table.
fn named_tables<'a>(cx: &mut Cx, f: &Field<'a>, section: &str) -> Option<Vec<(String, Field<'a>)>> {
    if !f.node.is_table() {
        cx.error(
            f.span.clone(),
            format!(
                "`{section}` must be a table of named sections like [{section}.NAME], found {}",
                f.node.type_name()
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    for e in r::entries(&f.node, &f.key_span) {
        let valid = !e.name.is_empty()
            && e.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            cx.error(
                e.key_span.clone(),
                format!(
                    "invalid name `{}` in [{section}.{}]: use lowercase letters, digits, `_` and `-`",
                    e.name, e.name
                ),
            );
            continue;
        }
        if !e.node.is_table() {
            cx.error(
                e.span.clone(),
                format!(
                    "`{section}.{}` must be a table ([{section}.{}]), found {}",
                    e.name,
                    e.name,
                    e.node.type_name()
                ),
            );
            continue;
        }
        out.push((e.name.to_string(), e));
    }
    Some(out)
}

fn service(
    cx: &mut Cx,
    f: &Field<'_>,
    name: String,
    base: &Path,
    refs: &mut Refs,
) -> Option<ServiceConfig> {
    let what = format!("[services.{name}]");
    let mut t = Fields::of(cx, f, what.clone(), SERVICE_KEYS)?;

    let port_field = t.get("port");
    let port = match &port_field {
        None => PortSpec::Auto,
        Some(pf) => port_spec(cx, pf).unwrap_or(PortSpec::Auto),
    };
    let instances = t
        .get("instances")
        .and_then(|f| r::int(cx, &f, 0, i64::from(u16::MAX)))
        .map_or(1, |i| i as u32);
    if let (PortSpec::Base(b), Some(pf)) = (port, &port_field) {
        if u32::from(b) + instances.max(1) - 1 > u32::from(u16::MAX) {
            cx.error(
                pf.span.clone(),
                format!("base port {b} + {instances} instances goes past port 65535"),
            );
        }
    }

    let command = match t.required(cx, "command") {
        Some(cf) => command(cx, &cf, &name, port).unwrap_or(CommandSpec::Shell(String::new())),
        None => CommandSpec::Shell(String::new()),
    };

    let mut env = BTreeMap::new();
    if let Some(ef) = t.get("env") {
        if !ef.node.is_table() {
            cx.error(
                ef.span.clone(),
                format!(
                    "`env` must be a table like {{ KEY = \"value\" }}, found {}",
                    ef.node.type_name()
                ),
            );
        } else {
            for e in r::entries(&ef.node, &ef.key_span) {
                if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                    cx.error(
                        e.key_span.clone(),
                        format!("invalid environment variable name `{}`", e.name),
                    );
                    continue;
                }
                match e.node.as_str() {
                    Some(v) => {
                        env.insert(e.name.to_string(), v.to_string());
                    }
                    None => cx.error(
                        e.span.clone(),
                        format!(
                            "environment values must be strings, found {}; quote it: {} = \"...\"",
                            e.node.type_name(),
                            e.name
                        ),
                    ),
                }
            }
        }
    }

    let cwd = t
        .get("cwd")
        .and_then(|f| r::string(cx, &f))
        .map_or_else(|| base.to_path_buf(), |s| resolve(base, &s));

    let ready = match t.get("ready") {
        None if port == PortSpec::None => None,
        None => Some(probe_defaults(Role::Ready, ProbeKind::Tcp { addr: None })),
        Some(pf) if pf.node.as_bool() == Some(false) => None,
        Some(pf) => probe(cx, &pf, Role::Ready, &format!("`ready` of {what}"), port),
    };
    let health = match t.get("health") {
        None => None,
        Some(pf) if pf.node.as_bool() == Some(false) => None,
        Some(pf) => probe(cx, &pf, Role::Health, &format!("`health` of {what}"), port),
    };

    let mut stop = StopConfig {
        signal: Signal::Term,
        grace: Duration::from_secs(30),
    };
    if let Some(sf) = t.get("stop") {
        if let Some(mut st) = Fields::of(cx, &sf, format!("`stop` of {what}"), &["signal", "grace"])
        {
            if let Some(s) = st.get("signal").and_then(|f| signal(cx, &f)) {
                stop.signal = s;
            }
            if let Some(g) = st.get("grace").and_then(|f| r::duration(cx, &f)) {
                stop.grace = g;
            }
        }
    }

    let restart = restart(cx, t.get("restart"), &what);

    let max_memory = t.get("max_memory").and_then(|f| {
        let v = r::size(cx, &f)?;
        if v == 0 {
            cx.error(
                f.span.clone(),
                "`max_memory` must be greater than zero; remove it for no limit",
            );
            return None;
        }
        Some(v)
    });

    let mut depends_on = Vec::new();
    let mut dep_spans = Vec::new();
    if let Some(df) = t.get("depends_on") {
        for item in r::array(cx, &df).unwrap_or_default() {
            if let Some(s) = r::string(cx, &item) {
                if depends_on.contains(&s) {
                    cx.error(
                        item.span.clone(),
                        format!("`{s}` is listed twice in `depends_on`"),
                    );
                    continue;
                }
                depends_on.push(s.clone());
                dep_spans.push(Spanned {
                    name: s,
                    span: item.span,
                });
            }
        }
    }

    let mut logs = LogsConfig {
        dir: resolve(base, ".drove/logs"),
        max_size: 10 << 20,
        keep: 3,
    };
    if let Some(lf) = t.get("logs") {
        if let Some(mut lt) = Fields::of(
            cx,
            &lf,
            format!("`logs` of {what}"),
            &["dir", "max_size", "keep"],
        ) {
            if let Some(d) = lt.get("dir").and_then(|f| r::string(cx, &f)) {
                logs.dir = resolve(base, &d);
            }
            if let Some(f) = lt.get("max_size") {
                match r::size(cx, &f) {
                    Some(0) => cx.error(f.span.clone(), "`max_size` must be greater than zero"),
                    Some(v) => logs.max_size = v,
                    None => {}
                }
            }
            if let Some(k) = lt.get("keep").and_then(|f| r::u32_at_least(cx, &f, 0)) {
                logs.keep = k;
            }
        }
    }

    refs.services.push((
        f.key_span.clone(),
        port_field.map_or_else(|| f.key_span.clone(), |p| p.span),
    ));
    refs.depends_on.push(dep_spans);
    Some(ServiceConfig {
        name,
        command,
        instances,
        port,
        env,
        cwd,
        ready,
        health,
        stop,
        restart,
        max_memory,
        depends_on,
        logs,
    })
}

fn port_spec(cx: &mut Cx, f: &Field<'_>) -> Option<PortSpec> {
    if let Some(i) = f.node.as_int() {
        return match u16::try_from(i) {
            Ok(p) if p > 0 => Some(PortSpec::Base(p)),
            _ => {
                cx.error(
                    f.span.clone(),
                    format!("`port` must be between 1 and 65535, \"auto\" or \"none\", found {i}"),
                );
                None
            }
        };
    }
    match f.node.as_str() {
        Some("auto") => Some(PortSpec::Auto),
        Some("none") => Some(PortSpec::None),
        Some(s) if s.parse::<u16>().is_ok() => {
            cx.error(
                f.span.clone(),
                format!("`port` must be an integer, not a string: write port = {s}"),
            );
            None
        }
        Some(s) => {
            cx.error(
                f.span.clone(),
                r::bad_choice("port", s, &["auto", "none"])
                    .replace("expected one of:", "expected a port number or one of:"),
            );
            None
        }
        None => {
            cx.error(
                f.span.clone(),
                format!(
                    "`port` must be a port number, \"auto\" or \"none\", found {}",
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

fn command(cx: &mut Cx, f: &Field<'_>, service: &str, port: PortSpec) -> Option<CommandSpec> {
    let spec = if let Some(s) = f.node.as_str() {
        if s.trim().is_empty() {
            cx.error(f.span.clone(), "`command` is empty");
            return None;
        }
        CommandSpec::Shell(s.to_string())
    } else if let Some(items) = f.node.as_array() {
        if items.is_empty() {
            cx.error(
                f.span.clone(),
                "`command` is an empty array; the first element is the program to run",
            );
            return None;
        }
        let mut argv = Vec::new();
        for item in r::array(cx, f).unwrap_or_default() {
            argv.push(r::string(cx, &item)?);
        }
        if argv[0].is_empty() {
            cx.error(
                f.span.clone(),
                "the program (first element of `command`) is empty",
            );
            return None;
        }
        CommandSpec::Argv(argv)
    } else {
        cx.error(
            f.span.clone(),
            format!(
                "`command` must be a string (run via sh -c) or an array of strings, found {}",
                f.node.type_name()
            ),
        );
        return None;
    };
    let parts: Vec<&str> = match &spec {
        CommandSpec::Shell(s) => vec![s.as_str()],
        CommandSpec::Argv(v) => v.iter().map(String::as_str).collect(),
    };
    let mut ok = true;
    for part in parts {
        for name in placeholders::used(part) {
            if !placeholders::KNOWN.contains(&name) {
                let hint = r::closest(name, placeholders::KNOWN)
                    .map(|b| format!("did you mean `{{{b}}}`? "))
                    .unwrap_or_default();
                cx.error(
                    f.span.clone(),
                    format!(
                        "unknown placeholder `{{{name}}}` in `command`; {hint}known placeholders: {{port}}, {{instance}} (write `{{{{` for a literal brace)"
                    ),
                );
                ok = false;
            } else if name == "port" && port == PortSpec::None {
                cx.error(
                    f.span.clone(),
                    format!("`command` uses {{port}} but service `{service}` has port = \"none\""),
                );
                ok = false;
            }
        }
    }
    ok.then_some(spec)
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Ready,
    Health,
    Balancer,
}

fn probe_defaults(role: Role, kind: ProbeKind) -> ProbeConfig {
    let ms = Duration::from_millis;
    let (interval, timeout, rise, fall) = match role {
        Role::Ready => (ms(500), ms(1000), 1, 1),
        Role::Health => (ms(2000), ms(1000), 2, 3),
        Role::Balancer => (ms(1000), ms(500), 2, 2),
    };
    ProbeConfig {
        kind,
        interval,
        timeout,
        rise,
        fall,
        start_timeout: Duration::from_secs(60),
        expect_status: None,
    }
}

fn probe(
    cx: &mut Cx,
    f: &Field<'_>,
    role: Role,
    what: &str,
    port: PortSpec,
) -> Option<ProbeConfig> {
    let allowed: &[&str] = match role {
        Role::Ready => &[
            "http",
            "tcp",
            "command",
            "interval",
            "timeout",
            "rise",
            "fall",
            "start_timeout",
            "expect_status",
        ],
        Role::Health => &[
            "http",
            "tcp",
            "command",
            "interval",
            "timeout",
            "rise",
            "fall",
            "expect_status",
        ],
        Role::Balancer => &[
            "http",
            "tcp",
            "interval",
            "timeout",
            "rise",
            "fall",
            "expect_status",
        ],
    };
    let mut t = Fields::of(cx, f, what.to_string(), allowed)?;
    let kinds: Vec<Field<'_>> = ["http", "tcp", "command"]
        .iter()
        .filter_map(|k| t.get(k))
        .collect();
    let kind_names = if role == Role::Balancer {
        "`http` or `tcp`"
    } else {
        "`http`, `tcp` or `command`"
    };
    if kinds.is_empty() {
        cx.error(t.span.clone(), format!("{what} needs one of {kind_names}"));
        return None;
    }
    let mut sorted = kinds.clone();
    sorted.sort_by_key(|k| k.key_span.start);
    for extra in &sorted[1..] {
        cx.error(
            extra.key_span.clone(),
            format!(
                "`{}` conflicts with `{}`: a probe has exactly one of {kind_names}",
                extra.name, sorted[0].name
            ),
        );
    }
    let kf = &sorted[0];
    let kind = match kf.name {
        "http" => {
            let path = r::string(cx, kf)?;
            if !path.starts_with('/') {
                cx.error(kf.span.clone(), format!("`http` must be a path starting with `/`, like \"/health\", found \"{path}\""));
                return None;
            }
            ProbeKind::Http { path }
        }
        "tcp" => match (kf.node.as_bool(), role) {
            (Some(true), Role::Balancer) => ProbeKind::Tcp { addr: None },
            (Some(true), _) if port == PortSpec::None => {
                cx.error(
                    kf.span.clone(),
                    "`tcp = true` probes the instance port, but this service has port = \"none\"; give an address like \"127.0.0.1:6379\"",
                );
                return None;
            }
            (Some(true), _) => ProbeKind::Tcp { addr: None },
            (_, Role::Balancer) => {
                cx.error(
                    kf.span.clone(),
                    "`tcp` in balancer health must be true (each backend's own address)",
                );
                return None;
            }
            (Some(false), _) => {
                cx.error(kf.span.clone(), "`tcp` must be true (the instance port) or an address like \"127.0.0.1:6379\"; to disable the probe write `ready = false`");
                return None;
            }
            (None, _) => {
                if kf.node.as_str().is_none() {
                    cx.error(kf.span.clone(), format!("`tcp` must be true (the instance port) or an address like \"127.0.0.1:6379\", found {}", kf.node.type_name()));
                    return None;
                }
                ProbeKind::Tcp {
                    addr: Some(r::socket_addr(cx, kf)?),
                }
            }
        },
        _ => {
            let cmd = r::string(cx, kf)?;
            if cmd.trim().is_empty() {
                cx.error(kf.span.clone(), "`command` is empty");
                return None;
            }
            ProbeKind::Command { cmd }
        }
    };
    let is_http = matches!(kind, ProbeKind::Http { .. });
    let mut p = probe_defaults(role, kind);
    if let Some(v) = t.get("interval").and_then(|f| r::positive_duration(cx, &f)) {
        p.interval = v;
    }
    if let Some(v) = t.get("timeout").and_then(|f| r::positive_duration(cx, &f)) {
        p.timeout = v;
    }
    if let Some(v) = t.get("rise").and_then(|f| r::u32_at_least(cx, &f, 1)) {
        p.rise = v;
    }
    if let Some(v) = t.get("fall").and_then(|f| r::u32_at_least(cx, &f, 1)) {
        p.fall = v;
    }
    if let Some(v) = t
        .get("start_timeout")
        .and_then(|f| r::positive_duration(cx, &f))
    {
        p.start_timeout = v;
    }
    if let Some(sf) = t.get("expect_status") {
        if !is_http {
            cx.error(
                sf.key_span.clone(),
                "`expect_status` is only valid with an `http` probe",
            );
        } else if let Some(s) = r::int(cx, &sf, 100, 599) {
            p.expect_status = Some(s as u16);
        }
    }
    Some(p)
}

fn signal(cx: &mut Cx, f: &Field<'_>) -> Option<Signal> {
    let s = r::string(cx, f)?;
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match bare {
        "TERM" => Signal::Term,
        "INT" => Signal::Int,
        "QUIT" => Signal::Quit,
        "HUP" => Signal::Hup,
        "KILL" => Signal::Kill,
        "USR1" => Signal::Usr1,
        "USR2" => Signal::Usr2,
        _ => {
            cx.error(
                f.span.clone(),
                r::bad_choice(
                    "signal",
                    &s,
                    &["TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2"],
                ),
            );
            return None;
        }
    })
}

fn restart(cx: &mut Cx, f: Option<Field<'_>>, what: &str) -> RestartConfig {
    let mut rc = RestartConfig {
        policy: RestartPolicy::Always,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
        reset_after: Duration::from_secs(30),
        crashloop_after: 5,
    };
    let Some(f) = f else { return rc };
    let keys = &[
        "policy",
        "initial_delay",
        "max_delay",
        "reset_after",
        "crashloop_after",
    ];
    let Some(mut t) = Fields::of(cx, &f, format!("`restart` of {what}"), keys) else {
        return rc;
    };
    if let Some(p) = t
        .get("policy")
        .and_then(|f| r::choice(cx, &f, "restart policy", &["always", "on-failure", "never"]))
    {
        rc.policy = match p {
            "always" => RestartPolicy::Always,
            "on-failure" => RestartPolicy::OnFailure,
            _ => RestartPolicy::Never,
        };
    }
    if let Some(v) = t
        .get("initial_delay")
        .and_then(|f| r::positive_duration(cx, &f))
    {
        rc.initial_delay = v;
    }
    if let Some(mf) = t.get("max_delay") {
        if let Some(v) = r::positive_duration(cx, &mf) {
            if v < rc.initial_delay {
                cx.error(
                    mf.span.clone(),
                    "`max_delay` must not be less than `initial_delay`",
                );
            } else {
                rc.max_delay = v;
            }
        }
    }
    if let Some(v) = t.get("reset_after").and_then(|f| r::duration(cx, &f)) {
        rc.reset_after = v;
    }
    if let Some(v) = t
        .get("crashloop_after")
        .and_then(|f| r::u32_at_least(cx, &f, 1))
    {
        rc.crashloop_after = v;
    }
    rc
}

fn balancer(cx: &mut Cx, f: &Field<'_>, base: &Path, refs: &mut Refs) -> Option<BalancerConfig> {
    let mut t = Fields::of(cx, f, "[balancer]".into(), BALANCER_KEYS)?;
    let mut b = BalancerConfig {
        listen: ([127, 0, 0, 1], 8080).into(),
        workers: 0,
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
        request_id: Some(DEFAULT_REQUEST_ID.to_string()),
        access_log: AccessLogFormat::Off,
        access_log_path: LogTarget::Stdout,
        max_header_size: 16 << 10,
        max_body_size: 0,
        routes: Vec::new(),
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
        (None, Some(bf)) => b.backends = Backends::Static(static_backends(cx, &bf)),
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

    if let Some(rf) = t.get("routes") {
        for item in r::array(cx, &rf).unwrap_or_default() {
            if let Some(route) = route(cx, &item, refs) {
                b.routes.push(route);
            }
        }
    }
    Some(b)
}

fn static_backends(cx: &mut Cx, f: &Field<'_>) -> Vec<StaticBackend> {
    let Some(items) = r::array(cx, f) else {
        return Vec::new();
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
            let keys = &["addr", "weight", "backup", "name"];
            let mut t = Fields::new(
                cx,
                &item.node,
                item.span.clone(),
                "a `backends` entry".into(),
                keys,
            );
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
            if let Some(w) = t.get("weight").and_then(|f| r::int(cx, &f, 1, 10_000)) {
                b.weight = w as u32;
            }
            if let Some(v) = t.get("backup").and_then(|f| r::boolean(cx, &f)) {
                b.backup = v;
            }
            if let Some(n) = t.get("name").and_then(|f| r::string(cx, &f)) {
                b.name = n;
            }
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
    out
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

enum Keyed {
    Header(String),
    Cookie(String),
    Word(&'static str),
}

/// `header:NAME` | `cookie:NAME` | one of `words`.
fn keyed(cx: &mut Cx, f: &Field<'_>, s: &str, words: &[&'static str]) -> Option<Keyed> {
    let forms = {
        let mut v = vec!["\"header:NAME\"".to_string(), "\"cookie:NAME\"".to_string()];
        v.extend(words.iter().map(|w| format!("\"{w}\"")));
        v.join(", ")
    };
    if let Some((kind, name)) = s.split_once(':') {
        let ok = r::is_header_name(name);
        match kind {
            "header" | "cookie" if !ok => {
                cx.error(
                    f.span.clone(),
                    format!("invalid {kind} name \"{name}\" in `{}`", f.name),
                );
                return None;
            }
            "header" => return Some(Keyed::Header(name.to_string())),
            "cookie" => return Some(Keyed::Cookie(name.to_string())),
            _ => {}
        }
    } else if let Some(w) = words.iter().find(|w| **w == s) {
        return Some(Keyed::Word(w));
    }
    cx.error(
        f.span.clone(),
        format!("invalid `{}` \"{s}\"; expected one of: {forms}", f.name),
    );
    None
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

fn route(cx: &mut Cx, f: &Field<'_>, refs: &mut Refs) -> Option<RouteConfig> {
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
        &["path", "limit"],
    );
    let path = t.required(cx, "path");
    let limit = t.required(cx, "limit");
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
    let limit = limit.and_then(|lf| {
        let l = r::string(cx, &lf)?;
        refs.route_limits.push(Spanned {
            name: l.clone(),
            span: lf.span.clone(),
        });
        Some(l)
    });
    Some(RouteConfig {
        path: path_ok?,
        limit: limit?,
    })
}

fn limit(cx: &mut Cx, f: &Field<'_>, name: &str) -> Option<LimitConfig> {
    let mut t = Fields::of(cx, f, format!("[limits.{name}]"), &["key", "rate", "burst"])?;
    let key = match t.get("key") {
        None => LimitKey::ClientIp,
        Some(kf) => {
            let s = r::string(cx, &kf)?;
            match keyed(cx, &kf, &s, &["client_ip"])? {
                Keyed::Header(h) => LimitKey::Header(h),
                Keyed::Cookie(c) => LimitKey::Cookie(c),
                Keyed::Word(_) => LimitKey::ClientIp,
            }
        }
    };
    let rate = t
        .required(cx, "rate")
        .and_then(|rf| r::parsed(cx, &rf, "rate", "\"10/s\" or \"600/m\"", units::rate));
    let burst = t.get("burst").and_then(|f| r::u32_at_least(cx, &f, 1));
    let rate = rate?;
    Some(LimitConfig {
        key,
        burst: burst.unwrap_or(rate.count),
        rate,
    })
}

fn admin(cx: &mut Cx, f: &Field<'_>, refs: &mut Refs) -> AdminConfig {
    let mut a = AdminConfig::default();
    let Some(mut t) = Fields::of(cx, f, "[admin]".into(), &["listen", "token"]) else {
        return a;
    };
    if let Some(lf) = t.get("listen") {
        if let Some(v) = r::socket_addr(cx, &lf) {
            a.listen = v;
        }
        refs.admin_listen = Some(lf.span);
    }
    if let Some(tf) = t.get("token") {
        if let Some(tok) = r::string(cx, &tf) {
            a.token = (!tok.is_empty()).then_some(tok);
        }
    }
    a
}

/// `p` relative to `base`, cleaned of `.` and `..` without touching the file system.
pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let joined = base.join(p);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

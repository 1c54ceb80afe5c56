//! `[services.NAME]`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::probe::{probe, probe_defaults, Role};
use super::{resolve, Refs, Spanned};
use crate::model::*;
use crate::placeholders;
use crate::reader::{self as r, Cx, Field, Fields};

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
pub(super) fn service(
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
        for name in drove_template::placeholders(part) {
            if !placeholders::KNOWN.contains(&name) {
                let hint = r::closest(name, placeholders::KNOWN)
                    .map(|b| format!("did you mean `{{{b}}}`? "))
                    .unwrap_or_default();
                cx.error(
                    f.span.clone(),
                    format!(
                        "unknown placeholder `{{{name}}}` in `command`; {hint}known placeholders: {{port}}, {{instance}}, {{drove}} (write `{{{{` for a literal brace)"
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

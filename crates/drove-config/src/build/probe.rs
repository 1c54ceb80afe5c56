//! Probes: `ready`, `health` and `[balancer] health`.

use std::time::Duration;

use crate::model::*;
use crate::reader::{self as r, Cx, Field, Fields};

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Role {
    Ready,
    Health,
    Balancer,
}

pub(super) fn probe_defaults(role: Role, kind: ProbeKind) -> ProbeConfig {
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

pub(super) fn probe(
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
            if port == PortSpec::None {
                cx.error(
                    kf.span.clone(),
                    "an `http` probe requests the instance port, but this service has port = \"none\"; use `command` or `tcp` with an address",
                );
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

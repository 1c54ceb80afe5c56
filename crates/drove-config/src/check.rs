//! Stage 3 of the pipeline: checks across sections (names that refer to other sections,
//! dependency cycles, port collisions) and defaults that depend on other sections.

use std::collections::HashMap;
use std::ops::Range;

use crate::build::Refs;
use crate::model::*;
use crate::reader::{closest, Cx};

pub(crate) fn config(cx: &mut Cx, config: &mut Config, refs: &Refs) {
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let unknown = |kind: &str, name: &str, known: &[&str]| {
        let mut msg = format!("unknown {kind} `{name}`");
        if let Some(best) = closest(name, known) {
            msg.push_str(&format!("; did you mean `{best}`?"));
        }
        if known.is_empty() {
            msg.push_str(&format!("; no {kind}s are defined"));
        } else {
            msg.push_str(&format!(" (defined: {})", known.join(", ")));
        }
        msg
    };

    // depends_on: unknown names, then cycles.
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    for deps in &refs.depends_on {
        for d in deps {
            if !index.contains_key(d.name.as_str()) {
                cx.error(d.span.clone(), unknown("service", &d.name, &names));
            }
        }
    }
    cycles(cx, &names, &index, refs);

    // The balanced service.
    let mut service_health = None;
    if let Some(s) = &refs.balancer_service {
        match config.service(&s.name) {
            None => cx.error(s.span.clone(), unknown("service", &s.name, &names)),
            Some(svc) if svc.port == PortSpec::None => cx.error(
                s.span.clone(),
                format!(
                    "service `{}` has port = \"none\"; the balancer needs a service with a port",
                    s.name
                ),
            ),
            Some(svc) => service_health = svc.health.clone(),
        }
    }
    if let Some(b) = &mut config.balancer {
        // The service's own health probe checks each instance; reuse it unless it is a
        // command or a fixed address, which say nothing about one backend.
        if !refs.balancer_health_set {
            b.health = service_health.filter(|p| {
                matches!(
                    p.kind,
                    ProbeKind::Http { .. } | ProbeKind::Tcp { addr: None }
                )
            });
        }
    }

    // Routes → limits.
    let limit_names: Vec<&str> = refs.limit_names.iter().map(String::as_str).collect();
    for l in &refs.route_limits {
        if !limit_names.contains(&l.name.as_str()) {
            cx.error(l.span.clone(), unknown("limit", &l.name, &limit_names));
        }
    }

    ports(cx, config, refs);

    if config.admin.token.is_none() && !config.admin.listen.ip().is_loopback() {
        config.warnings.push(format!(
            "the admin API listens on {} (not loopback) without a token: anyone who can reach it can scale, restart and stop services; set `token` in [admin]",
            config.admin.listen
        ));
    }
}

/// Reports each dependency cycle once, at the `depends_on` entry that closes it.
fn cycles(cx: &mut Cx, names: &[&str], index: &HashMap<&str, usize>, refs: &Refs) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        cx: &mut Cx,
        v: usize,
        names: &[&str],
        index: &HashMap<&str, usize>,
        refs: &Refs,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) {
        marks[v] = Mark::Active;
        stack.push(v);
        for d in &refs.depends_on[v] {
            let Some(&w) = index.get(d.name.as_str()) else {
                continue;
            };
            match marks[w] {
                Mark::New => visit(cx, w, names, index, refs, marks, stack),
                Mark::Active => {
                    let msg = if w == v {
                        format!("service `{}` depends on itself", names[v])
                    } else {
                        let start = stack.iter().position(|&s| s == w).unwrap_or(0);
                        let path: Vec<&str> = stack[start..].iter().map(|&s| names[s]).collect();
                        format!("dependency cycle: {} -> {}", path.join(" -> "), names[w])
                    };
                    cx.error(d.span.clone(), msg);
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[v] = Mark::Done;
    }
    let mut marks = vec![Mark::New; names.len()];
    for v in 0..names.len() {
        if marks[v] == Mark::New {
            visit(cx, v, names, index, refs, &mut marks, &mut Vec::new());
        }
    }
}

/// Fixed service port ranges must not overlap each other or the listeners.
fn ports(cx: &mut Cx, config: &Config, refs: &Refs) {
    let mut ranges: Vec<(&str, u32, u32, Range<usize>)> = Vec::new();
    for (svc, (_, port_span)) in config.services.iter().zip(&refs.services) {
        if let PortSpec::Base(b) = svc.port {
            let lo = u32::from(b);
            let hi = lo + svc.instances.max(1) - 1;
            for (other, olo, ohi, _) in &ranges {
                if lo <= *ohi && *olo <= hi {
                    cx.error(
                        port_span.clone(),
                        format!(
                            "ports {} of service `{}` overlap ports {} of service `{other}`",
                            fmt_range(lo, hi),
                            svc.name,
                            fmt_range(*olo, *ohi)
                        ),
                    );
                }
            }
            ranges.push((&svc.name, lo, hi, port_span.clone()));
        }
    }
    let mut listeners = Vec::new();
    if let (Some(b), Some(span)) = (&config.balancer, &refs.balancer_listen) {
        listeners.push(("balancer", b.listen, span.clone()));
    }
    if let Some(span) = &refs.admin_listen {
        listeners.push(("admin", config.admin.listen, span.clone()));
    }
    for (who, addr, span) in &listeners {
        let p = u32::from(addr.port());
        for (svc, lo, hi, _) in &ranges {
            if p != 0 && (*lo..=*hi).contains(&p) {
                cx.error(
                    span.clone(),
                    format!(
                        "{who} listen port {p} collides with ports {} of service `{svc}`",
                        fmt_range(*lo, *hi)
                    ),
                );
            }
        }
    }
    let admin = config.admin.listen;
    if let Some(b) = &config.balancer {
        let same = b.listen.port() == admin.port()
            && (b.listen.ip() == admin.ip()
                || b.listen.ip().is_unspecified()
                || admin.ip().is_unspecified());
        if same && admin.port() != 0 {
            let span = refs
                .admin_listen
                .clone()
                .or(refs.balancer_listen.clone())
                .unwrap_or(0..0);
            cx.error(
                span,
                format!("admin listen address {admin} is also the balancer's listen address"),
            );
        }
    }
}

fn fmt_range(lo: u32, hi: u32) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

//! Stage 2 of the pipeline: the spanned `toml_edit` tree → per-section Rust values.
//! Each section reader reports its own errors and falls back to defaults so that reading
//! goes on; names that other sections refer to are kept with their spans in [`Refs`] for
//! the cross-reference checks in `check.rs`. One file per large section.

mod balancer;
mod compress;
mod probe;
mod service;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml_edit::Table;

use crate::model::*;
use crate::reader::{self as r, Cx, Field, Fields, Node};
use crate::units;

const TOP_KEYS: &[&str] = &["services", "balancer", "limits", "admin"];

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
                if let Some(svc) = service::service(cx, &f, name, base, &mut refs) {
                    config.services.push(svc);
                }
            }
        }
    }
    if let Some(f) = top.get("balancer") {
        config.balancer = balancer::balancer(cx, &f, base, &mut refs);
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

fn limit(cx: &mut Cx, f: &Field<'_>, name: &str) -> Option<LimitConfig> {
    let mut t = Fields::of(
        cx,
        f,
        format!("[limits.{name}]"),
        &["key", "rate", "burst", "redis"],
    )?;
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
    let redis = t.get("redis").and_then(|rf| {
        let url = r::string(cx, &rf)?;
        if url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")
        {
            Some(url)
        } else {
            cx.error(
                rf.span.clone(),
                format!(
                    "`redis` must be a Redis URL like \"redis://127.0.0.1:6379/\", got \"{url}\""
                ),
            );
            None
        }
    });
    let rate = rate?;
    Some(LimitConfig {
        key,
        burst: burst.unwrap_or(rate.count),
        rate,
        redis,
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

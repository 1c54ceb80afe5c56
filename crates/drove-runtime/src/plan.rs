//! A reload as a typed plan: [`diff`] compares the config in force with the file and
//! lists [`Change`]s; the reload applies them one by one, and [`adopt`] copies into the
//! config in force exactly the part of the file that a change applied — so the config in
//! force is always what runs, and a change that failed is found again by the next
//! reload's diff.
//!
//! Every key of the file belongs to exactly one change (docs/operations.md has the
//! table); a key missing here would be a silent "nothing changed", so
//! `every_balancer_key_is_covered` checks that changing any one of them yields a plan.

use drove_config::{Backends, BalancerConfig, Config};

pub use drove_api::Change;

/// What the TLS files contain now, to notice a renewed certificate under the same path.
pub(crate) type TlsFingerprint = Option<u64>;

/// A hash of the certificate and key files named by `b` (None without TLS or when a file
/// cannot be read: then the reload's apply reports the error).
pub(crate) fn tls_fingerprint(b: Option<&BalancerConfig>) -> TlsFingerprint {
    use std::hash::{Hash, Hasher};
    let t = b?.tls.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(&t.cert).ok()?.hash(&mut h);
    std::fs::read(&t.key).ok()?.hash(&mut h);
    Some(h.finish())
}

/// The changes that turn `in_force` into `file`, in the order they are applied:
/// services added first (a new target may need them), the balancer's parts, the admin
/// listener, services removed last (after the balancer routes elsewhere).
/// `tls_in_force` is the fingerprint of the certificate files loaded now.
pub fn diff(in_force: &Config, file: &Config, tls_in_force: TlsFingerprint) -> Vec<Change> {
    let mut plan = Vec::new();
    for s in &file.services {
        if in_force.service(&s.name).is_none() {
            plan.push(Change::ServiceAdded {
                service: s.name.clone(),
            });
        }
    }
    for s in &file.services {
        let Some(o) = in_force.service(&s.name) else {
            continue;
        };
        let keys = service_keys(o, s);
        if !keys.is_empty() {
            plan.push(Change::ServiceChanged {
                service: s.name.clone(),
                keys,
            });
        }
        if o.instances != s.instances {
            plan.push(Change::ServiceScaled {
                service: s.name.clone(),
                from: o.instances,
                to: s.instances,
            });
        }
    }
    match (&in_force.balancer, &file.balancer) {
        (Some(o), Some(n)) => balancer_changes(o, n, file, in_force, tls_in_force, &mut plan),
        // Limits without a balancer have no effect, but are in force all the same.
        (None, None) if in_force.limits != file.limits => plan.push(Change::Limits {
            keys: vec!["limits".into()],
        }),
        (None, None) => {}
        (_, n) => plan.push(Change::BalancerPresence {
            present: n.is_some(),
        }),
    }
    if in_force.admin.token != file.admin.token {
        plan.push(Change::AdminToken);
    }
    if in_force.admin.listen != file.admin.listen {
        plan.push(Change::AdminListen {
            from: in_force.admin.listen,
            to: file.admin.listen,
        });
    }
    for s in &in_force.services {
        if file.service(&s.name).is_none() {
            plan.push(Change::ServiceRemoved {
                service: s.name.clone(),
            });
        }
    }
    plan
}

fn service_keys(o: &drove_config::ServiceConfig, n: &drove_config::ServiceConfig) -> Vec<String> {
    let mut k = Vec::new();
    let mut add = |changed: bool, name: &str| {
        if changed {
            k.push(name.to_string());
        }
    };
    add(o.command != n.command, "command");
    add(o.port != n.port, "port");
    add(o.env != n.env, "env");
    add(o.cwd != n.cwd, "cwd");
    add(o.ready != n.ready, "ready");
    add(o.health != n.health, "health");
    add(o.stop != n.stop, "stop");
    add(o.restart != n.restart, "restart");
    add(o.max_memory != n.max_memory, "max_memory");
    add(o.depends_on != n.depends_on, "depends_on");
    add(o.logs != n.logs, "logs");
    k
}

fn target(b: &BalancerConfig) -> String {
    match &b.backends {
        Backends::Service(s) => format!("service {s}"),
        Backends::Static(_) => "backends".into(),
    }
}

fn balancer_changes(
    o: &BalancerConfig,
    n: &BalancerConfig,
    file: &Config,
    in_force: &Config,
    tls_in_force: TlsFingerprint,
    plan: &mut Vec<Change>,
) {
    let (from, to) = (target(o), target(n));
    if from != to {
        plan.push(Change::Target { from, to });
    } else if o.backends != n.backends
        || o.dns_backends != n.dns_backends
        || o.resolver != n.resolver
    {
        let fixed = match &n.backends {
            Backends::Static(l) => l.len(),
            Backends::Service(_) => 0,
        };
        plan.push(Change::Backends {
            fixed,
            dns: n.dns_backends.len(),
        });
    }
    let keys = |pairs: &[(bool, &str)]| -> Vec<String> {
        pairs
            .iter()
            .filter(|(changed, _)| *changed)
            .map(|(_, k)| k.to_string())
            .collect()
    };
    let balancing = keys(&[
        (o.algorithm != n.algorithm, "algorithm"),
        (o.passive != n.passive, "passive"),
        (o.max_ejected != n.max_ejected, "max_ejected"),
    ]);
    if !balancing.is_empty() {
        plan.push(Change::Balancing { keys: balancing });
    }
    if o.health != n.health {
        plan.push(Change::Health);
    }
    let data = keys(&[
        (o.timeouts != n.timeouts, "timeouts"),
        (o.retries != n.retries, "retries"),
        (o.sticky != n.sticky, "sticky"),
        (o.instance_header != n.instance_header, "instance_header"),
        (o.request_id != n.request_id, "request_id"),
        (o.trusted_proxies != n.trusted_proxies, "trusted_proxies"),
        (o.upgrades != n.upgrades, "upgrades"),
        (o.http2 != n.http2, "http2"),
        (
            o.http2_max_streams != n.http2_max_streams,
            "http2_max_streams",
        ),
        (o.compress != n.compress, "compress"),
        (o.access_log != n.access_log, "access_log"),
        (o.access_log_path != n.access_log_path, "access_log_path"),
        (o.max_header_size != n.max_header_size, "max_header_size"),
        (o.max_body_size != n.max_body_size, "max_body_size"),
    ]);
    if !data.is_empty() {
        plan.push(Change::DataPath { keys: data });
    }
    let limits = keys(&[
        (o.routes != n.routes, "balancer.routes"),
        (in_force.limits != file.limits, "limits"),
    ]);
    if !limits.is_empty() {
        plan.push(Change::Limits { keys: limits });
    }
    // `http2` is also in the TLS config (ALPN offers h2 or not).
    if o.tls != n.tls || (n.tls.is_some() && o.http2 != n.http2) {
        plan.push(Change::Tls { files_only: false });
    } else if n.tls.is_some() && tls_fingerprint(Some(n)) != tls_in_force {
        plan.push(Change::Tls { files_only: true });
    }
    let listeners = keys(&[
        (o.listen != n.listen, "listen"),
        (o.workers != n.workers, "workers"),
        (o.defer_accept != n.defer_accept, "defer_accept"),
    ]);
    if !listeners.is_empty() {
        plan.push(Change::Listeners { keys: listeners });
    }
}

/// Copies into `in_force` the part of `file` that `change` applied.
pub fn adopt(in_force: &mut Config, file: &Config, change: &Change) {
    match change {
        Change::ServiceAdded { service } => {
            if let Some(s) = file.service(service) {
                in_force.services.push(s.clone());
            }
        }
        Change::ServiceChanged { service, .. } => {
            if let (Some(n), Some(o)) = (
                file.service(service),
                in_force.services.iter_mut().find(|s| s.name == *service),
            ) {
                let instances = o.instances;
                *o = n.clone();
                o.instances = instances;
            }
        }
        Change::ServiceScaled { service, to, .. } => {
            if let Some(o) = in_force.services.iter_mut().find(|s| s.name == *service) {
                o.instances = *to;
            }
        }
        Change::ServiceRemoved { service } => in_force.services.retain(|s| s.name != *service),
        Change::BalancerPresence { .. } => in_force.balancer = file.balancer.clone(),
        Change::AdminToken => in_force.admin.token = file.admin.token.clone(),
        Change::AdminListen { .. } => in_force.admin.listen = file.admin.listen,
        Change::Limits { .. } => {
            in_force.limits = file.limits.clone();
            if let (Some(o), Some(n)) = (&mut in_force.balancer, &file.balancer) {
                o.routes = n.routes.clone();
            }
        }
        _ => {
            let (Some(o), Some(n)) = (&mut in_force.balancer, &file.balancer) else {
                return;
            };
            match change {
                Change::Target { .. } | Change::Backends { .. } => {
                    o.backends = n.backends.clone();
                    o.dns_backends = n.dns_backends.clone();
                    o.resolver = n.resolver.clone();
                }
                Change::Balancing { .. } => {
                    o.algorithm = n.algorithm.clone();
                    o.passive = n.passive.clone();
                    o.max_ejected = n.max_ejected;
                }
                Change::Health => o.health = n.health.clone(),
                Change::DataPath { .. } => {
                    o.timeouts = n.timeouts.clone();
                    o.retries = n.retries.clone();
                    o.sticky = n.sticky.clone();
                    o.instance_header = n.instance_header.clone();
                    o.request_id = n.request_id.clone();
                    o.trusted_proxies = n.trusted_proxies.clone();
                    o.upgrades = n.upgrades.clone();
                    o.http2 = n.http2;
                    o.http2_max_streams = n.http2_max_streams;
                    o.compress = n.compress.clone();
                    o.access_log = n.access_log;
                    o.access_log_path = n.access_log_path.clone();
                    o.max_header_size = n.max_header_size;
                    o.max_body_size = n.max_body_size;
                }
                Change::Tls { .. } => o.tls = n.tls.clone(),
                Change::Listeners { .. } => {
                    o.listen = n.listen;
                    o.workers = n.workers;
                    o.defer_accept = n.defer_accept;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` from one file per test process (old and new configs of a test share
    /// the directory, as a reload's do: `cwd` defaults to it).
    fn load(text: &str) -> Config {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("drove-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Files for `tls`: validation wants them to exist; the plan only hashes them.
        std::fs::write(dir.join("c.pem"), "cert").unwrap();
        std::fs::write(dir.join("k.pem"), "key").unwrap();
        let p = dir.join("drove.toml");
        std::fs::write(&p, text).unwrap();
        drove_config::load(&p).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const BASE: &str = "[balancer]\nlisten = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9001\"]\n";

    /// Every `[balancer]` key, changed alone, gives a plan; applying the plan (adopting
    /// each change) makes the config in force equal to the file.
    #[test]
    fn every_balancer_key_is_covered() {
        let lines = [
            "workers = 3",
            "defer_accept = false",
            "algorithm = \"least_conn\"",
            "algorithm = \"hash\"\nhash_key = \"header:X-User\"",
            "sticky = { cookie = \"s\" }",
            "retries = { attempts = 5 }",
            "passive = { max_fails = 9 }",
            "health = { http = \"/h\" }",
            "max_ejected = \"20%\"",
            "timeouts = { connect = \"3s\" }",
            "instance_header = \"X-I\"",
            "trusted_proxies = [\"10.0.0.0/8\"]",
            "upgrades = []",
            "http2 = false",
            "http2_max_streams = 7",
            "compress = true",
            "[[balancer.routes]]\npath = \"/a\"\ncompress = true",
            "request_id = false",
            "access_log = \"json\"",
            "access_log_path = \"/tmp/x.log\"",
            "max_header_size = \"8KiB\"",
            "max_body_size = \"1MiB\"",
            "tls = { cert = \"c.pem\", key = \"k.pem\" }",
            "resolver = { interval = \"9s\" }",
        ];
        let old = load(BASE);
        for l in lines {
            let new = load(&format!("{BASE}{l}\n"));
            let plan = diff(&old, &new, tls_fingerprint(old.balancer.as_ref()));
            assert!(!plan.is_empty(), "no change for `{l}`");
            let mut f = old.clone();
            for c in &plan {
                adopt(&mut f, &new, c);
            }
            assert_eq!(f, new, "`{l}`: {plan:?}");
        }
        // The same TLS paths with new contents (a renewed certificate).
        let tls = load(&format!(
            "{BASE}tls = {{ cert = \"c.pem\", key = \"k.pem\" }}\n"
        ));
        let loaded = tls_fingerprint(tls.balancer.as_ref());
        assert!(diff(&tls, &tls, loaded).is_empty());
        let dir = tls.path.as_ref().unwrap().parent().unwrap();
        std::fs::write(dir.join("c.pem"), "renewed cert").unwrap();
        assert_eq!(
            diff(&tls, &tls, loaded),
            vec![Change::Tls { files_only: true }]
        );
        let moved = load(&BASE.replace("8080", "8081"));
        assert_eq!(
            diff(&old, &moved, None),
            vec![Change::Listeners {
                keys: vec!["listen".into()]
            }]
        );
    }

    #[test]
    fn services_limits_admin_and_a_failed_change_found_again() {
        let old = load(
            "[services.a]\ncommand = \"true\"\n[services.b]\ncommand = \"true\"\ninstances = 2\n\
             [balancer]\nservice = \"a\"\n",
        );
        let new = load(
            "[services.a]\ncommand = \"true\"\nenv = { X = \"1\" }\n[services.b]\ncommand = \"true\"\ninstances = 3\n\
             [services.c]\ncommand = \"true\"\n[balancer]\nservice = \"c\"\n\
             [[balancer.routes]]\npath = \"/x\"\nlimit = \"l\"\n[limits.l]\nrate = \"5/s\"\n\
             [admin]\ntoken = \"t\"\nlisten = \"127.0.0.1:9901\"\n",
        );
        let plan = diff(&old, &new, None);
        let names: Vec<String> = plan.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            names,
            [
                "services.c added",
                "services.a",
                "services.b.instances",
                "balancer target (service a -> service c)",
                "balancer.routes, limits",
                "admin.token",
                "admin.listen (127.0.0.1:9900 -> 127.0.0.1:9901)",
            ]
        );
        // Everything but the target applied: the next diff still has the target.
        let mut f = old.clone();
        for c in plan.iter().filter(|c| !matches!(c, Change::Target { .. })) {
            adopt(&mut f, &new, c);
        }
        assert_eq!(
            diff(&f, &new, None),
            vec![Change::Target {
                from: "service a".into(),
                to: "service c".into()
            }]
        );
        // Removing a service comes last.
        let plan = diff(&new, &old, None);
        assert_eq!(
            plan.last(),
            Some(&Change::ServiceRemoved {
                service: "c".into()
            })
        );
    }
}

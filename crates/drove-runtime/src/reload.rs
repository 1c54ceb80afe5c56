//! Config reload (`drove reload`, `POST /api/reload`, SIGHUP): re-read the file drove was
//! started from and apply what changed without dropping a request, or nothing at all.
//!
//! A file with errors changes nothing (the errors are returned, `file:line:col`). Then:
//! - a service whose settings changed gets its new spec and a rolling restart (drain →
//!   stop → replacement ready, one instance at a time, as `drove restart`); a changed
//!   `instances` is a scale. Health state, in-flight counts, sticky mappings and open
//!   client connections are untouched: the balancer and the proxy keep running.
//! - the balancer's backends (fixed, `dns`/`srv` entries, `resolver`) are replaced;
//!   backends that stay keep their state (`Balancer::set_backends`).
//! - what needs a new process — a service added or removed, `depends_on`, the listen
//!   addresses, algorithm, timeouts, headers, limits, admin — is listed as not applied
//!   (restart drove to change it); the rest is applied anyway.

use std::sync::Arc;

use drove_api::ReloadReport;
use drove_config::{Backends, BalancerConfig, Config};

use crate::{discovery, services, Running};

/// What a reload can change after startup, and the state it changes.
pub struct Reloadable {
    /// The config in force (the one last applied).
    current: Config,
    /// The DNS refresh loop, replaced when the DNS entries change.
    discovery: Option<tokio::task::JoinHandle<()>>,
}

impl Reloadable {
    pub(crate) fn new(current: Config, discovery: Option<tokio::task::JoinHandle<()>>) -> Self {
        Reloadable { current, discovery }
    }

    /// Stops the DNS refresh loop (at shutdown).
    pub(crate) fn stop(&mut self) {
        if let Some(t) = self.discovery.take() {
            t.abort();
        }
    }
}

/// How a reload went: `ok` false = the file had errors and nothing changed.
pub fn report(
    ok: bool,
    applied: Vec<String>,
    not_applied: Vec<String>,
    error: Option<String>,
) -> ReloadReport {
    ReloadReport {
        ok,
        applied,
        not_applied,
        error,
    }
}

/// Re-reads the config file and applies it (see the module doc). One reload at a time.
pub async fn reload(r: &Running) -> ReloadReport {
    let mut guard = r.reloadable.lock().await;
    let Reloadable {
        current,
        discovery: dns_task,
    } = &mut *guard;
    let Some(path) = current.path.clone() else {
        return report(
            false,
            vec![],
            vec![],
            Some("drove runs the built-in demo: there is no file to reload".into()),
        );
    };
    let new = match drove_config::load(&path) {
        Ok(c) => c,
        Err(e) => return report(false, vec![], vec![], Some(e.to_string())),
    };
    let old: &Config = current;
    let mut applied = Vec::new();
    let mut not_applied = Vec::new();

    // Services.
    for s in &old.services {
        if new.service(&s.name).is_none() {
            not_applied.push(format!(
                "services.{} removed (restart drove to remove a service)",
                s.name
            ));
        }
    }
    let new_specs = services::specs(&new, r.balanced_service.as_deref());
    for s in &new.services {
        let Some(o) = old.service(&s.name) else {
            not_applied.push(format!(
                "services.{} added (restart drove to add a service)",
                s.name
            ));
            continue;
        };
        if o.depends_on != s.depends_on {
            not_applied.push(format!(
                "services.{}.depends_on (restart drove to change it)",
                s.name
            ));
            continue;
        }
        let mut same_but_count = s.clone();
        same_but_count.instances = o.instances;
        if &same_but_count != o {
            let spec = new_specs
                .iter()
                .find(|x| x.name == s.name)
                .cloned()
                .expect("a spec per service");
            match r.supervisor.update(spec).await {
                Ok(()) => match r.supervisor.restart(&s.name).await {
                    Ok(rep) => applied.push(format!(
                        "services.{}: new settings, rolling restart of {} instance(s) in {:.1}s",
                        s.name,
                        rep.replaced.len(),
                        rep.elapsed.as_secs_f64()
                    )),
                    Err(e) => applied.push(format!(
                        "services.{}: new settings for new processes; rolling restart failed: {e}",
                        s.name
                    )),
                },
                Err(e) => not_applied.push(format!("services.{}: {e}", s.name)),
            }
        }
        if s.instances != o.instances {
            match r.supervisor.scale(&s.name, s.instances).await {
                Ok(()) => applied.push(format!(
                    "services.{}.instances: {} -> {}",
                    s.name, o.instances, s.instances
                )),
                Err(e) => not_applied.push(format!("services.{}.instances: {e}", s.name)),
            }
        }
    }

    // Balancer.
    match (&old.balancer, &new.balancer, &r.balancer) {
        (Some(ob), Some(nb), Some(bal)) => {
            let backends_changed = ob.backends != nb.backends
                || ob.dns_backends != nb.dns_backends
                || ob.resolver != nb.resolver;
            let service_to_static = matches!(
                (&ob.backends, &nb.backends),
                (Backends::Service(_), Backends::Static(_))
                    | (Backends::Static(_), Backends::Service(_))
            );
            if service_to_static
                || matches!((&ob.backends, &nb.backends), (Backends::Service(a), Backends::Service(b)) if a != b)
            {
                not_applied.push(
                    "balancer.service / balancer.backends switch (restart drove to change it)"
                        .into(),
                );
            } else if backends_changed {
                if let Backends::Static(list) = &nb.backends {
                    // The old refresh loop is stopped first (and awaited, so it cannot
                    // swap in the old entries afterwards); the running set stays until
                    // the new one (fixed + resolved) replaces it in one swap.
                    if let Some(t) = dns_task.take() {
                        t.abort();
                        let _ = t.await;
                    }
                    match discovery::install(bal, list, nb, r.shutdown.subscribe()).await {
                        Ok((_, task)) => *dns_task = task,
                        Err(e) => not_applied.push(format!("balancer DNS backends: {e:#}")),
                    }
                    applied.push(format!(
                        "balancer.backends: {} fixed, {} DNS entr{}",
                        list.len(),
                        nb.dns_backends.len(),
                        if nb.dns_backends.len() == 1 {
                            "y"
                        } else {
                            "ies"
                        }
                    ));
                }
            }
            if !same_apart_from_backends(ob, nb) {
                not_applied.push(
                    "other [balancer] settings (listen, algorithm, timeouts, headers, health, retries, routes; restart drove to change them)"
                        .into(),
                );
            }
        }
        (None, None, _) => {}
        _ => not_applied.push("[balancer] added or removed (restart drove to change it)".into()),
    }
    if old.limits != new.limits {
        not_applied.push("[limits] (restart drove to change them)".into());
    }
    if old.admin != new.admin {
        not_applied.push("[admin] (restart drove to change it)".into());
    }
    if applied.is_empty() && not_applied.is_empty() {
        applied.push("nothing changed".into());
    }
    *current = new;
    report(true, applied, not_applied, None)
}

fn same_apart_from_backends(a: &BalancerConfig, b: &BalancerConfig) -> bool {
    let mut b = b.clone();
    b.backends = a.backends.clone();
    b.dns_backends = a.dns_backends.clone();
    b.resolver = a.resolver.clone();
    *a == b
}

/// Runs a reload on SIGHUP, printing what it did, until shutdown.
pub(crate) fn on_sighup(r: Arc<Running>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            println!("drove: SIGHUP, reloading the config");
            print_report(&reload(&r).await);
        }
    }))
}

/// Prints a reload report the way `drove reload` does.
pub fn print_report(v: &ReloadReport) {
    if !v.ok {
        println!(
            "drove: reload refused, nothing changed:\n{}",
            v.error.as_deref().unwrap_or("")
        );
        return;
    }
    for a in &v.applied {
        println!("drove: reload: applied {a}");
    }
    for a in &v.not_applied {
        println!("drove: reload: NOT applied {a}");
    }
}

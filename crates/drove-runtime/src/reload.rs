//! Config reload (`drove reload`, `POST /api/reload`, SIGHUP): re-read the file drove was
//! started from and apply every change live, without dropping a request.
//!
//! A file with errors changes nothing (the errors are returned, `file:line:col`).
//! Otherwise the reload is a typed plan ([`crate::plan`]): diff(config in force, file) →
//! a list of [`Change`]s → each applied in turn → the config in force becomes exactly
//! what was applied (a change that failed leaves its part as it was, so the next reload
//! finds it again). `--dry-run` stops after the diff. What each change does:
//!
//! - services: added (started once their dependencies are ready), changed (new spec,
//!   rolling restart), scaled, removed (drained and stopped, after the balancer routes
//!   elsewhere); instances of unchanged services are never touched.
//! - the balancer: its target (service ↔ backends) and backends are swapped in one
//!   step, keeping the state (health, in-flight, EWMA) of backends that stay; picking
//!   and ejection rules (`Balancer::set_settings`); health probes started again;
//!   everything a request reads (timeouts, retries, headers, sizes, stickiness, the
//!   access log, routes and limits — an unchanged limit keeps its state — and TLS: a
//!   changed certificate, or changed files behind the same paths, serves the next
//!   handshake) is one new settings generation for the proxy
//!   (`drove_proxy::Proxy::update`): requests in flight finish with the settings they
//!   started with.
//! - the listeners (`listen`, `workers`, `defer_accept`) and `[admin] listen`: the new
//!   sockets are bound and served before the old ones stop accepting (on the same
//!   address the sockets themselves are taken over, so nothing queued on them is lost);
//!   `[admin] token` at once.
//!
//! Only adding or removing `[balancer]` as a whole is not done in process; it is
//! reported as not applied.

use std::sync::Arc;

use drove_api::{Outcome, ReloadReport};
use drove_config::{Backends, Config};

use crate::admin::{AdminServer, AdminState};
use crate::listeners::ProxyListeners;
use crate::plan::{self, Change, TlsFingerprint};
use crate::{discovery, proxy_settings, services, Running};

/// What a reload can change after startup, and the handles it changes.
pub struct Reloadable {
    /// The DNS refresh loop, replaced when the DNS entries change.
    discovery: Option<tokio::task::JoinHandle<()>>,
    /// The active health probes, started again when `balancer.health` changes.
    health: Option<tokio::task::JoinHandle<()>>,
    /// What the certificate files held when they were loaded.
    tls: TlsFingerprint,
    /// The listeners serving now, and older ones still finishing their requests.
    pub(crate) listeners: Option<ProxyListeners>,
    retiring: Vec<tokio::task::JoinHandle<()>>,
    /// The admin listener serving now, and what it serves.
    pub(crate) admin: Option<AdminServer>,
    pub(crate) admin_state: Option<AdminState>,
}

impl Reloadable {
    pub(crate) fn new(
        discovery: Option<tokio::task::JoinHandle<()>>,
        health: Option<tokio::task::JoinHandle<()>>,
        tls: TlsFingerprint,
        listeners: Option<ProxyListeners>,
    ) -> Self {
        Reloadable {
            discovery,
            health,
            tls,
            listeners,
            retiring: Vec::new(),
            admin: None,
            admin_state: None,
        }
    }

    /// The servers, for the shutdown to stop in order.
    pub(crate) fn take_servers(
        &mut self,
    ) -> (
        Option<ProxyListeners>,
        Vec<tokio::task::JoinHandle<()>>,
        Option<AdminServer>,
    ) {
        (
            self.listeners.take(),
            std::mem::take(&mut self.retiring),
            self.admin.take(),
        )
    }

    /// Stops the DNS refresh loop and the health probes (at shutdown).
    pub(crate) fn stop(&mut self) {
        for t in [self.discovery.take(), self.health.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}

/// Re-reads the config file and applies it (see the module doc); with `dry_run` only
/// says what it would do. One reload at a time.
pub async fn reload(r: &Running, dry_run: bool) -> ReloadReport {
    let mut state = r.reloadable.lock().await;
    let in_force: Arc<Config> = r.config.load_full();
    let Some(path) = in_force.path.clone() else {
        return ReloadReport::refused(
            "drove runs the built-in demo: there is no file to reload".into(),
        );
    };
    let file = match drove_config::load(&path) {
        Ok(c) => c,
        Err(e) => return ReloadReport::refused(e.to_string()),
    };
    let plan = plan::diff(&in_force, &file, state.tls);
    let mut report = ReloadReport {
        ok: true,
        dry_run,
        plan: plan.clone(),
        applied: Vec::new(),
        not_applied: Vec::new(),
        error: None,
    };
    if dry_run {
        return report;
    }
    r.notify.reloading();
    let mut current = (*in_force).clone();
    current.path = file.path.clone();
    current.warnings = file.warnings.clone();
    for change in plan {
        let mut next = current.clone();
        plan::adopt(&mut next, &file, &change);
        match apply(r, &mut state, &current, &next, &change).await {
            Ok(detail) => {
                tracing::info!(change = %change, %detail, "reload: applied");
                current = next;
                // Published after each step: the admin API shows what runs.
                r.config.store(Arc::new(current.clone()));
                report.applied.push(Outcome { change, detail });
            }
            Err(detail) => {
                tracing::warn!(change = %change, %detail, "reload: not applied");
                report.not_applied.push(Outcome { change, detail });
            }
        }
    }
    r.config.store(Arc::new(current));
    let (a, n) = (report.applied.len(), report.not_applied.len());
    r.notify.ready(&format!(
        "reloaded: {a} change(s) applied{}",
        if n > 0 {
            format!(", {n} NOT applied")
        } else {
            String::new()
        }
    ));
    report
}

/// Applies one change; `next` is the config in force with this change adopted.
async fn apply(
    r: &Running,
    state: &mut Reloadable,
    current: &Config,
    next: &Config,
    change: &Change,
) -> Result<String, String> {
    let balanced = r.balanced_service();
    match change {
        Change::ServiceAdded { service } => {
            let spec = spec_of(next, service, balanced.as_deref())?;
            r.supervisor
                .add_service(spec)
                .await
                .map_err(|e| e.to_string())?;
            Ok("started (once its dependencies are ready)".into())
        }
        Change::ServiceChanged { service, keys } => {
            let spec = spec_of(next, service, balanced.as_deref())?;
            r.supervisor.update(spec).await.map_err(|e| e.to_string())?;
            match r.supervisor.restart(service).await {
                Ok(rep) => Ok(format!(
                    "new settings, rolling restart of {} instance(s) in {:.1}s (changed: {})",
                    rep.replaced.len(),
                    rep.elapsed.as_secs_f64(),
                    keys.join(", "),
                )),
                // The new spec is in force for every process started from now on.
                Err(e) => Ok(format!(
                    "new settings for new processes; rolling restart failed: {e}"
                )),
            }
        }
        Change::ServiceScaled { service, from, to } => {
            r.supervisor
                .scale(service, *to)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("{from} -> {to}"))
        }
        Change::ServiceRemoved { service } => {
            if balanced.as_deref() == Some(service.as_str()) {
                return Err("the balancer still routes to it".into());
            }
            r.supervisor
                .remove_service(service)
                .await
                .map_err(|e| e.to_string())?;
            Ok("drained and stopped".into())
        }
        Change::BalancerPresence { .. } => Err(
            "adding or removing [balancer] as a whole is not done in a running drove; restart drove for it"
                .into(),
        ),
        Change::AdminToken => Ok("in force for the next request".into()),
        Change::Limits { .. } if next.balancer.is_none() => {
            Ok("no [balancer]: kept for when there is one".into())
        }
        Change::AdminListen { to, .. } => {
            let (Some(old), Some(st)) = (state.admin.take(), state.admin_state.clone()) else {
                return Err("the admin listener is not running".into());
            };
            let listener = match tokio::net::TcpListener::bind(to).await {
                Ok(l) => l,
                Err(e) => {
                    state.admin = Some(old);
                    return Err(format!("cannot listen on {to}: {e}"));
                }
            };
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            state.admin = Some(AdminServer::start(listener, st, r.shutdown.subscribe()));
            r.set_admin(addr);
            println!("drove: admin API now on http://{addr}/");
            // The old listener finishes what it serves (this request, if it came that
            // way) and closes.
            state.retiring.push(tokio::spawn(old.retire()));
            Ok(format!("now on {addr}"))
        }
        _ => apply_balancer(r, state, current, next, change).await,
    }
}

fn spec_of(
    config: &Config,
    service: &str,
    balanced: Option<&str>,
) -> Result<drove_supervisor::ServiceSpec, String> {
    services::specs(config, balanced)
        .into_iter()
        .find(|s| s.name == service)
        .ok_or_else(|| format!("no service {service} in the file"))
}

/// The balancer's changes.
async fn apply_balancer(
    r: &Running,
    state: &mut Reloadable,
    current: &Config,
    next: &Config,
    change: &Change,
) -> Result<String, String> {
    let (Some(bal), Some(proxy), Some(nb)) = (&r.balancer, &r.proxy, &next.balancer) else {
        return Err("no balancer is running".into());
    };
    match change {
        Change::Target { to, .. } => {
            match &nb.backends {
                Backends::Static(list) => {
                    stop_discovery(state).await;
                    let (n, task) = discovery::install(bal, list, nb, r.shutdown.subscribe())
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    state.discovery = task;
                    *r.balanced.write().unwrap_or_else(|e| e.into_inner()) = None;
                    Ok(format!("{to}: {n} backend(s)"))
                }
                Backends::Service(name) => {
                    if r.supervisor.services().iter().all(|s| s != name) {
                        return Err(format!("no service {name} runs"));
                    }
                    // Traffic moves only once the service can take it: every instance
                    // it should have is ready (a service added by this reload is still
                    // starting).
                    wait_ready(r, name).await?;
                    stop_discovery(state).await;
                    // The target switches first, so Ready events from now on are
                    // applied; the instances ready now are installed in one swap.
                    *r.balanced.write().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
                    let ready: Vec<drove_balancer::BackendSpec> = r
                        .supervisor
                        .status()
                        .await
                        .into_iter()
                        .filter(|s| {
                            s.id.service == *name
                                && s.state == drove_supervisor::InstanceState::Ready
                        })
                        .filter_map(|s| {
                            Some(drove_balancer::BackendSpec {
                                id: s.id.to_string(),
                                addr: std::net::SocketAddr::from((
                                    std::net::Ipv4Addr::LOCALHOST,
                                    s.port?,
                                )),
                                weight: 1,
                                backup: false,
                            })
                        })
                        .collect();
                    let n = ready.len();
                    bal.set_backends(ready);
                    Ok(format!("{to}: {n} instance(s) ready"))
                }
            }
        }
        Change::Backends { fixed, dns } => {
            let Backends::Static(list) = &nb.backends else {
                return Ok(
                    "kept for when `backends` is used (the balancer routes to a service)".into(),
                );
            };
            // The old refresh loop is stopped first (and awaited, so it cannot swap in
            // the old entries afterwards); the running set stays until the new one
            // (fixed + resolved) replaces it in one swap.
            stop_discovery(state).await;
            let (_, task) = discovery::install(bal, list, nb, r.shutdown.subscribe())
                .await
                .map_err(|e| format!("DNS backends: {e:#}"))?;
            state.discovery = task;
            Ok(format!(
                "{fixed} fixed, {dns} DNS entr{}",
                if *dns == 1 { "y" } else { "ies" }
            ))
        }
        Change::Balancing { .. } => {
            // The proxy first (it may refuse: a bad hash key), then the balancer.
            update_proxy(r, next, None, None).await?;
            bal.set_settings(proxy_settings::balancer_settings(nb));
            Ok(format!(
                "{} from the next request; backends, health and counters kept",
                nb.algorithm.name()
            ))
        }
        Change::Health => {
            if let Some(t) = state.health.take() {
                t.abort();
            }
            match nb.health.as_ref().and_then(proxy_settings::active_health) {
                Some(h) => {
                    state.health = Some(bal.spawn_health_checks(h));
                    Ok("probes started again with the new settings; health state kept".into())
                }
                None => {
                    // Nothing probes any more: a backend held down by the last probes
                    // would stay down for ever.
                    bal.clear_probe_state();
                    Ok("probes stopped".into())
                }
            }
        }
        Change::DataPath { .. } => {
            update_proxy(r, next, None, None).await?;
            Ok("for requests that start from now on".into())
        }
        Change::Limits { .. } => {
            let routes =
                proxy_settings::route_limits(next, &proxy.routes(), Some(&current.limits)).await;
            let n = routes.len();
            update_proxy(r, next, Some(routes), None).await?;
            Ok(format!(
                "{n} limited route(s); unchanged limits keep their state"
            ))
        }
        Change::Tls { .. } => {
            let tls = match &nb.tls {
                Some(t) => Some(
                    drove_proxy::tls::server_config(&t.cert, &t.key, nb.http2)
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let fingerprint = plan::tls_fingerprint(Some(nb));
            update_proxy(r, next, None, Some(tls)).await?;
            state.tls = fingerprint;
            Ok("served to new connections; open ones keep their session".into())
        }
        Change::Listeners { keys } => {
            let Some(old) = state.listeners.take() else {
                return Err("no listener is running".into());
            };
            // The address in force stays (a `--listen` given at startup included)
            // unless the file moved it.
            let addr = if keys.iter().any(|k| k == "listen") {
                nb.listen
            } else {
                old.addr
            };
            let workers = proxy_settings::workers(nb);
            // A new address is checked like at startup: another process's
            // SO_REUSEPORT socket there would share its traffic.
            let sockets = if addr == old.addr {
                old.bind_next(addr, workers, nb.defer_accept)
                    .map_err(anyhow::Error::from)
            } else {
                crate::listen::exclusive(addr, || old.bind_next(addr, workers, nb.defer_accept))
            };
            let started = sockets.and_then(|sockets| {
                ProxyListeners::start(sockets, proxy.clone(), r.shutdown.subscribe())
                    .map_err(anyhow::Error::from)
            });
            let new = match started {
                Ok(l) => l,
                Err(e) => {
                    state.listeners = Some(old);
                    return Err(format!("cannot listen on {addr}: {e:#}"));
                }
            };
            let bound = new.addr;
            state.listeners = Some(new);
            r.set_listen(bound);
            if bound != old.addr {
                let scheme = if nb.tls.is_some() { "https" } else { "http" };
                println!("drove: balancer now on {scheme}://{bound}/");
            }
            state.retiring.push(old.retire());
            Ok(format!(
                "{workers} worker(s) on {bound}; the old listeners finish their requests"
            ))
        }
        _ => Err(format!("{change}: not a balancer change")),
    }
}

/// How long a switch of the balancer's target waits for the new service's instances.
const TARGET_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until every instance `service` should have is ready (at least one).
async fn wait_ready(r: &Running, service: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + TARGET_READY_WAIT;
    loop {
        let want = r.supervisor.desired_instances(service).unwrap_or(1).max(1) as usize;
        let ready = r
            .supervisor
            .status()
            .await
            .iter()
            .filter(|s| {
                s.id.service == service && s.state == drove_supervisor::InstanceState::Ready
            })
            .count();
        if ready >= want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{ready} of {want} instance(s) of {service} ready after {TARGET_READY_WAIT:?}; the balancer routes where it did"
            ));
        }
        // Polling is fine: a reload is rare and instances take far longer than this.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn stop_discovery(state: &mut Reloadable) {
    if let Some(t) = state.discovery.take() {
        t.abort();
        let _ = t.await;
    }
}

/// A new settings generation for the proxy from `next`, keeping the routes (rate
/// limiters) and TLS in force unless given.
async fn update_proxy(
    r: &Running,
    next: &Config,
    routes: Option<Vec<drove_proxy::RouteLimit>>,
    tls: Option<Option<Arc<drove_proxy::tls::ServerConfig>>>,
) -> Result<(), String> {
    let (Some(proxy), Some(nb)) = (&r.proxy, &next.balancer) else {
        return Err("no balancer is running".into());
    };
    let now = proxy.settings();
    let mut s = proxy_settings::proxy_settings(nb).map_err(|e| e.to_string())?;
    s.routes = routes.unwrap_or(now.routes);
    s.tls = tls.unwrap_or(now.tls);
    proxy
        .update(s)
        .map_err(|e| format!("cannot open the access log: {e}"))
}

/// Runs a reload on SIGHUP, printing what it did, until shutdown.
pub(crate) fn on_sighup(r: Arc<Running>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            println!("drove: SIGHUP, reloading the config");
            // A panic in one reload is contained: the next SIGHUP still reloads.
            if let Some(report) = crate::contain::caught("reload", reload(&r, false)).await {
                print_report(&report);
            }
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
    if v.dry_run {
        for c in &v.plan {
            println!("drove: reload --dry-run: would apply {c}");
        }
    }
    for a in &v.applied {
        println!("drove: reload: applied {}: {}", a.change, a.detail);
    }
    for a in &v.not_applied {
        println!("drove: reload: NOT applied {}: {}", a.change, a.detail);
    }
    if v.plan.is_empty() {
        println!("drove: reload: nothing changed");
    }
}

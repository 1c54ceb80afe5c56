//! The wiring of drove: turns a validated [`drove_config::Config`] into running parts and
//! owns the startup and shutdown order.
//!
//! `drove-runtime` is the only crate that sees every other one. It maps config sections
//! to each part's own settings ([`proxy_settings`], [`services`]), starts the supervisor,
//! the balancer with its health checks, the proxy workers and the admin listener, and
//! turns supervisor [`drove_supervisor::InstanceEvent`]s into backend-set changes (ready →
//! join rotation; draining → leave rotation, wait for in-flight, ack; gone → removed).
//! Shutdown (SIGINT/SIGTERM or `POST /api/down`): stop accepting, let in-flight requests
//! finish, then stop the services in reverse dependency order.
//! Main entry points: [`up`] and [`admin_client::request`].

mod activation;
pub mod admin;
pub mod admin_client;
pub mod contain;
mod discovery;
mod listen;
mod listeners;
pub mod notify;
pub mod plan;
pub mod proxy_settings;
pub mod reload;
pub mod services;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use arc_swap::ArcSwap;
use drove_balancer::{BackendSpec, Balancer};
use drove_config::{Backends, Config};
use drove_proxy::Proxy;
use drove_supervisor::{Guardian, InstanceEvent, Supervisor, SupervisorOptions};
use tokio::sync::{mpsc, watch};

/// How `drove up` runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Print every instance's output with a `web.2 |` prefix.
    pub log_to_stdout: bool,
    /// Colour those prefixes.
    pub color: bool,
    /// Override the balancer's listen address (tests use port 0).
    pub listen: Option<SocketAddr>,
    /// Override the admin listen address (tests use port 0).
    pub admin_listen: Option<SocketAddr>,
    /// Run `PROGRAM __guardian` as the guardian that stops the instances if drove dies
    /// without doing so (`drove up` passes its own executable; `None`: no guardian).
    pub guardian: Option<std::path::PathBuf>,
}

/// The service the balancer routes to (None: its `backends` list), changed by a reload.
pub type BalancedService = Arc<RwLock<Option<String>>>;

/// The running parts, shared with the admin API.
pub struct Running {
    /// The config in force: what runs, changed only by what a reload applied.
    pub config: Arc<ArcSwap<Config>>,
    /// The balancer, if there is a `[balancer]`.
    pub balancer: Option<Arc<Balancer>>,
    /// The proxy, if there is a `[balancer]`.
    pub proxy: Option<Proxy>,
    /// The supervisor.
    pub supervisor: Supervisor,
    /// The service the balancer routes to, if any.
    pub balanced: BalancedService,
    /// Set to true to shut everything down.
    pub shutdown: watch::Sender<bool>,
    /// When drove started.
    pub started: tokio::time::Instant,
    /// The balancer's and the admin API's bound addresses.
    addrs: Mutex<(Option<SocketAddr>, SocketAddr)>,
    /// What `drove reload` changes, one reload at a time.
    pub reloadable: tokio::sync::Mutex<reload::Reloadable>,
    /// systemd's notify socket (a no-op outside systemd).
    pub notify: Arc<notify::Notifier>,
    /// The path drove was started from (what `drove upgrade` runs by default).
    pub exe: std::path::PathBuf,
    /// The guardian process, if one runs.
    pub guardian: Option<Arc<Guardian>>,
    /// The upgrades so far.
    pub upgrades: Mutex<drove_api::UpgradeStatus>,
}

impl Running {
    /// The balancer's bound address.
    pub fn listen(&self) -> Option<SocketAddr> {
        lock(&self.addrs).0
    }
    /// The admin API's bound address.
    pub fn admin(&self) -> SocketAddr {
        lock(&self.addrs).1
    }
    pub(crate) fn set_listen(&self, a: SocketAddr) {
        lock(&self.addrs).0 = Some(a);
    }
    pub(crate) fn set_admin(&self, a: SocketAddr) {
        lock(&self.addrs).1 = a;
    }
    /// The service the balancer routes to now.
    pub fn balanced_service(&self) -> Option<String> {
        self.balanced
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `config` until SIGINT/SIGTERM or `POST /api/down`, then shuts down in order.
pub async fn up(config: Config, opts: UpOptions) -> anyhow::Result<()> {
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    // Started by `drove upgrade`: sockets, instances and counters come from the drove
    // this one replaces, instead of being bound and spawned.
    let inherited = upgrade::take_inherited()?;
    // Started by systemd with sockets it listens on (only at a first start: an upgrade
    // hands over what was activated then).
    let mut activated = match &inherited {
        Some(_) => None,
        None => activation::take()?,
    }
    .unwrap_or_default();
    let mut config = config;
    if let Some(h) = &inherited {
        // A `drove scale` since startup holds across the upgrade.
        for (svc, n) in &h.desired {
            if let Some(s) = config.services.iter_mut().find(|s| &s.name == svc) {
                s.instances = *n;
            }
        }
    }

    // Balancer and proxy.
    let mut balancer = None;
    let mut proxy = None;
    let mut listeners = None;
    let mut balanced_service = None;
    let mut health_task = None;
    let mut discovery_task = None;
    if let Some(b) = &config.balancer {
        let bal = Balancer::new(proxy_settings::balancer_settings(b));
        match &b.backends {
            Backends::Static(list) => {
                let (n, task) = discovery::install(&bal, list, b, shutdown_rx.clone()).await?;
                if !b.dns_backends.is_empty() {
                    println!("drove: {n} backend(s) after the first DNS resolution");
                }
                discovery_task = task;
            }
            Backends::Service(name) => balanced_service = Some(name.clone()),
        }
        if let Some(h) = b.health.as_ref().and_then(proxy_settings::active_health) {
            health_task = Some(bal.spawn_health_checks(h));
        }
        let addr = opts.listen.unwrap_or(b.listen);
        let sockets = match inherited.as_ref().filter(|h| !h.listeners.is_empty()) {
            Some(h) => h
                .listeners
                .iter()
                .map(|fd| drove_proxy::handoff::listener_from_fd(*fd))
                .collect::<std::io::Result<Vec<_>>>()
                .context("cannot take over the balancer's listening sockets")?,
            None if !activated.balancer.is_empty() => activation::for_workers(
                std::mem::take(&mut activated.balancer),
                proxy_settings::workers(b),
            )?,
            // SO_REUSEPORT (one socket per worker) would let a second drove bind the
            // same address and the kernel split traffic between two deployments: check
            // first.
            None => listen::exclusive(addr, || {
                drove_proxy::bind(addr, proxy_settings::workers(b), b.defer_accept)
            })
            .with_context(|| format!("cannot listen on {addr} (balancer.listen)"))?,
        };
        let mut settings = proxy_settings::proxy_settings(b)?;
        settings.routes = proxy_settings::route_limits(&config, &[], None).await;
        if let Some(t) = &b.tls {
            settings.tls = Some(
                drove_proxy::tls::server_config(&t.cert, &t.key, b.http2)
                    .map_err(|e| anyhow::anyhow!("balancer.tls: {e}"))?,
            );
        }
        let p = Proxy::new(bal.clone(), settings).context("cannot open the access log")?;
        if let Some(h) = &inherited {
            // The instances that were in rotation are in rotation before the first
            // request is accepted (the supervisor's own `ready` events follow).
            if let Some(svc) = &balanced_service {
                for i in h.instances.iter().filter(|i| &i.service == svc && i.ready) {
                    let id =
                        drove_supervisor::InstanceId::new(i.service.clone(), i.index).to_string();
                    bal.upsert(BackendSpec {
                        id: id.clone(),
                        addr: SocketAddr::from(([127, 0, 0, 1], i.port.unwrap_or(0))),
                        weight: 1,
                        backup: false,
                    });
                    bal.set_enabled(&id, true);
                }
            }
            bal.restore(&h.backends);
            p.stats().restore(&h.counters.values);
            p.adopt(upgrade::connections(&h.connections));
        }
        listeners = Some(listeners::ProxyListeners::start(
            sockets,
            p.clone(),
            shutdown_rx.clone(),
        )?);
        proxy = Some(p);
        balancer = Some(bal);
    }

    // Admin listener (bound before the services start, so a port clash fails fast).
    let admin_addr = opts.admin_listen.unwrap_or(config.admin.listen);
    let admin_listener = match (inherited.as_ref().and_then(|h| h.admin), activated.admin) {
        (Some(fd), _) => tokio::net::TcpListener::from_std(
            drove_proxy::handoff::listener_from_fd(fd)
                .context("cannot take over the admin listening socket")?,
        )?,
        (None, Some(l)) => tokio::net::TcpListener::from_std(l)?,
        (None, None) => tokio::net::TcpListener::bind(admin_addr)
            .await
            .map_err(|e| listen::explain(admin_addr, e))
            .with_context(|| format!("cannot listen on {admin_addr} (admin.listen)"))?,
    };
    let admin = admin_listener.local_addr()?;

    // The guardian, then the supervisor: every process group spawned is reported to it.
    let adopted_guardian = inherited
        .as_ref()
        .and_then(|h| h.guardian)
        .map(|(pid, fd)| Arc::new(Guardian::adopt(pid, fd)));
    let guardian = adopted_guardian.or_else(|| opts.guardian.as_ref().and_then(|exe| {
        Guardian::start(exe, &["__guardian"])
            .map(Arc::new)
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot start the guardian process: instances' children may outlive a killed drove")
            })
            .ok()
    }));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let specs = services::specs(&config, balanced_service.as_deref());
    let supervisor = Supervisor::start(
        specs,
        events_tx,
        SupervisorOptions {
            log_to_stdout: opts.log_to_stdout,
            color: opts.color,
            guardian: guardian.clone(),
            adopt: inherited
                .as_ref()
                .map(|h| h.instances.clone())
                .unwrap_or_default(),
        },
    )
    .map_err(|e| {
        if let Some(g) = &guardian {
            g.release();
        }
        anyhow::anyhow!("{e}")
    })?;

    let balanced: BalancedService = Arc::new(RwLock::new(balanced_service));
    let tls = plan::tls_fingerprint(config.balancer.as_ref());
    let running = Arc::new(Running {
        reloadable: tokio::sync::Mutex::new(reload::Reloadable::new(
            discovery_task,
            health_task,
            tls,
            listeners,
        )),
        config: Arc::new(ArcSwap::from_pointee(config)),
        balancer: balancer.clone(),
        proxy,
        addrs: Mutex::new((None, admin)),
        supervisor: supervisor.clone(),
        balanced: balanced.clone(),
        shutdown: shutdown_tx.clone(),
        started: tokio::time::Instant::now(),
        notify: Arc::new(notify::Notifier::from_env()),
        exe: opts
            .guardian
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_default(),
        guardian: guardian.clone(),
        upgrades: Mutex::new(match &inherited {
            Some(h) => drove_api::UpgradeStatus {
                count: h.upgrades + 1,
                last: Some(h.report.clone()),
                failed: None,
            },
            None => Default::default(),
        }),
    });
    if let Some(h) = &inherited {
        println!(
            "drove: upgraded from {} in {} ms: {} instance(s) kept, {} connection(s) handed over",
            h.report.from_version,
            h.report.took_ms,
            h.instances.len(),
            h.connections.len()
        );
    }
    let watchdog = running.notify.spawn_watchdog();
    let listen = running
        .reloadable
        .lock()
        .await
        .listeners
        .as_ref()
        .map(|l| l.addr);
    if let Some(l) = listen {
        running.set_listen(l);
    }
    let events_task = {
        let balancer = balancer.clone();
        tokio::spawn(async move {
            let mut rx = events_rx;
            while contain::caught(
                "instance events",
                apply_events(&mut rx, balancer.as_ref(), &balanced),
            )
            .await
            .is_none()
            {}
        })
    };
    let hup_task = reload::on_sighup(running.clone())?;
    let usr2_task = on_sigusr2(running.clone())?;
    let admin_state = admin::AdminState::new(running.clone());
    let mut inherited = inherited;
    if let Some(h) = inherited.as_mut() {
        admin_state
            .history()
            .restore(std::mem::take(&mut h.history));
    }
    let sampler = admin::start_sampler(&admin_state, shutdown_rx.clone());
    {
        let mut r = running.reloadable.lock().await;
        r.admin = Some(admin::AdminServer::start(
            admin_listener,
            admin_state.clone(),
            shutdown_rx.clone(),
        ));
        r.admin_state = Some(admin_state);
    }

    if let Some(l) = listen {
        let scheme = if running
            .config
            .load()
            .balancer
            .as_ref()
            .is_some_and(|b| b.tls.is_some())
        {
            "https"
        } else {
            "http"
        };
        println!("drove: balancer on {scheme}://{l}/");
    }
    println!(
        "drove: admin API, metrics and dashboard on http://{admin}/ (drove status, drove down)"
    );
    let ready_task = tokio::spawn(notify_ready(running.clone()));

    // Wait for a reason to stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("drove: interrupted, shutting down"),
        _ = term.recv() => println!("drove: SIGTERM, shutting down"),
        _ = shutdown_rx.wait_for(|v| *v) => println!("drove: shutdown requested, shutting down"),
    }
    let _ = shutdown_tx.send(true);
    running.notify.stopping();
    ready_task.abort();
    // 1. The proxy stops accepting and finishes in-flight requests (up to its grace).
    // (A reload in progress finishes first: it holds the lock.)
    let (current, retiring, admin_server) = running.reloadable.lock().await.take_servers();
    if let Some(l) = current {
        let _ = l.retire().await;
    }
    for t in retiring {
        let _ = t.await;
    }
    // 2. Services stop in reverse dependency order.
    supervisor.shutdown().await;
    if let Some(g) = &guardian {
        g.release();
    }
    running.reloadable.lock().await.stop();
    hup_task.abort();
    usr2_task.abort();
    events_task.abort();
    sampler.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(a) = admin_server {
        a.retire().await;
    }
    println!("drove: stopped");
    Ok(())
}

/// SIGUSR2 upgrades drove in place with the binary at its path (like nginx's USR2).
fn on_sigusr2(r: Arc<Running>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    Ok(tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            println!("drove: SIGUSR2, upgrading");
            if let Err(why) = upgrade::start(&r, None).await {
                println!("drove: upgrade refused: {why}");
            }
        }
    }))
}

/// Tells systemd `READY=1` once every service has all its instances ready (the
/// listeners are bound before this task starts).
async fn notify_ready(r: Arc<Running>) {
    loop {
        let status = r.supervisor.status().await;
        let services = r.supervisor.services();
        let ready = |svc: &str| {
            status
                .iter()
                .filter(|s| {
                    s.id.service == svc && s.state == drove_supervisor::InstanceState::Ready
                })
                .count()
        };
        let all = services.iter().all(|svc| {
            let want = r.supervisor.desired_instances(svc).unwrap_or(0) as usize;
            ready(svc) >= want
        });
        if all {
            let n: usize = services.iter().map(|s| ready(s)).sum();
            let listen = r
                .listen()
                .map(|l| format!(", balancer on {l}"))
                .unwrap_or_default();
            r.notify.ready(&format!("{n} instance(s) ready{listen}"));
            return;
        }
        // Polling: readiness is a one-time event at startup.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Turns supervisor events into backend-set changes for the balanced service.
async fn apply_events(
    rx: &mut mpsc::UnboundedReceiver<InstanceEvent>,
    balancer: Option<&Arc<Balancer>>,
    balanced: &BalancedService,
) {
    while let Some(ev) = rx.recv().await {
        let ours = balancer.is_some()
            && balanced
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                == Some(ev.id().service.as_str());
        let Some(bal) = balancer.filter(|_| ours) else {
            // Not balanced: nothing waits on a drain, ack at once.
            if let InstanceEvent::Draining { done, .. } = ev {
                let _ = done.send(());
            }
            continue;
        };
        let fresh = matches!(ev, InstanceEvent::Ready { .. });
        match ev {
            InstanceEvent::Ready { id, addr } | InstanceEvent::Undrained { id, addr } => {
                let id = id.to_string();
                bal.upsert(BackendSpec {
                    id: id.clone(),
                    addr,
                    weight: 1,
                    backup: false,
                });
                if fresh {
                    // A new process: what the balancer's probes said of the old one
                    // (down while it restarted) does not hold it out of rotation.
                    bal.reset_health(&id);
                }
                bal.set_enabled(&id, true);
                // The supervisor's `ready` line already says it; once is enough.
                tracing::debug!(instance = %id, %addr, "instance in rotation");
            }
            InstanceEvent::Draining { id, grace, done } => {
                let id = id.to_string();
                bal.set_enabled(&id, false);
                let bal = bal.clone();
                tokio::spawn(async move {
                    let idle = bal.wait_idle(&id, grace).await;
                    if !idle {
                        tracing::warn!(instance = %id, "drain grace ended with requests in flight");
                    }
                    // Idle upstream connections to it are closed by each worker's pool
                    // sweep (every 500 ms) now that it is disabled; give it one round.
                    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                    let _ = done.send(());
                });
            }
            InstanceEvent::Gone { id } => {
                bal.remove(&id.to_string());
            }
            InstanceEvent::StateChanged { .. } => {}
        }
    }
}

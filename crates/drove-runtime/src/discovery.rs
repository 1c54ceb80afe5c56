//! Backends found through DNS: `backends = [{ dns = "web.internal:8080" }]` (A/AAAA) or
//! `[{ srv = "_http._tcp.web.internal" }]` (SRV), re-resolved every `resolver.interval` —
//! how Kubernetes headless Services, Consul and Swarm's `tasks.NAME` publish instances.
//!
//! Each resolution replaces the backend set with the fixed backends plus the addresses
//! found (`Balancer::set_backends` keeps the state — health, in-flight, EWMA — of every
//! address that stays). A lookup that fails (timeout, SERVFAIL) keeps that entry's last
//! good addresses, as nginx's `resolve` and HAProxy's resolvers do; a name that exists no
//! more (NXDOMAIN, no records) has no addresses: its backends leave rotation.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drove_balancer::{BackendSpec, Balancer};
use drove_config::{BalancerConfig, DnsBackend, DnsQuery, ResolverConfig, StaticBackend};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;

/// Longest the first resolution may hold startup or a reload.
const FIRST_RESOLUTION: Duration = Duration::from_secs(10);

/// The balancer's fixed backends as specs.
pub(crate) fn fixed_specs(list: &[StaticBackend]) -> Vec<BackendSpec> {
    list.iter()
        .map(|s| BackendSpec {
            id: s.name.clone(),
            addr: s.addr,
            weight: s.weight,
            backup: s.backup,
        })
        .collect()
}

/// Installs the backends of `b` (whose `backends` is a list) on `balancer` in one swap:
/// the fixed ones plus what a first resolution of the DNS entries finds, then starts the
/// refresh loop. An entry that cannot be resolved now keeps the addresses the balancer
/// already has under its name (a reload never drops live backends for a slow DNS).
/// Returns the backend count and the loop.
pub(crate) async fn install(
    balancer: &Arc<Balancer>,
    fixed: &[StaticBackend],
    b: &BalancerConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(usize, Option<tokio::task::JoinHandle<()>>)> {
    let fixed = fixed_specs(fixed);
    if b.dns_backends.is_empty() {
        balancer.set_backends(fixed.clone());
        return Ok((fixed.len(), None));
    }
    let mut d = Discovery::new(fixed, b.dns_backends.clone(), &b.resolver)?;
    let running = balancer.snapshot();
    for (i, e) in d.entries.iter().enumerate() {
        let prefix = format!("{}@", e.name);
        d.last[i] = running
            .iter()
            .filter(|x| x.id().starts_with(&prefix))
            .map(|x| BackendSpec {
                id: x.id().to_string(),
                addr: x.addr(),
                weight: x.weight(),
                backup: x.is_backup(),
            })
            .collect();
    }
    if tokio::time::timeout(FIRST_RESOLUTION, d.resolve_all())
        .await
        .is_err()
    {
        tracing::warn!(
            "first DNS resolution timed out; retrying every {:?}",
            b.resolver.interval
        );
    }
    let all = d.backends();
    let n = all.len();
    balancer.set_backends(all);
    Ok((
        n,
        Some(d.spawn(balancer.clone(), b.resolver.interval, shutdown)),
    ))
}

/// The DNS entries of one balancer and what they resolved to last.
pub(crate) struct Discovery {
    resolver: TokioResolver,
    fixed: Vec<BackendSpec>,
    entries: Vec<DnsBackend>,
    /// Last good addresses per entry (same order as `entries`).
    last: Vec<Vec<BackendSpec>>,
}

impl Discovery {
    fn new(
        fixed: Vec<BackendSpec>,
        entries: Vec<DnsBackend>,
        config: &ResolverConfig,
    ) -> anyhow::Result<Discovery> {
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().context("reading /etc/resolv.conf")?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                hickory_resolver::config::ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        // drove re-resolves on its own interval: answers must not outlive it in a cache.
        builder.options_mut().positive_max_ttl = Some(config.interval);
        builder.options_mut().negative_max_ttl = Some(config.interval);
        // A lookup should fail within about one interval, not hold the loop for the
        // default 5 s x 2 attempts.
        builder.options_mut().timeout = config
            .interval
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let resolver = builder.build().context("building the DNS resolver")?;
        let last = vec![Vec::new(); entries.len()];
        Ok(Discovery {
            resolver,
            fixed,
            entries,
            last,
        })
    }

    /// Resolves every entry once and installs the result when it changed.
    pub(crate) async fn refresh(&mut self, balancer: &Balancer) {
        if self.resolve_all().await {
            balancer.set_backends(self.backends());
        }
    }

    /// The fixed backends and every entry's last good addresses.
    fn backends(&self) -> Vec<BackendSpec> {
        self.fixed
            .iter()
            .cloned()
            .chain(self.last.iter().flatten().cloned())
            .collect()
    }

    /// Resolves every entry once; returns whether any entry's addresses changed.
    async fn resolve_all(&mut self) -> bool {
        let mut changed = false;
        for (i, entry) in self.entries.iter().enumerate() {
            match resolve(&self.resolver, entry).await {
                Ok(mut found) => {
                    found.sort_by(|a, b| a.id.cmp(&b.id));
                    if found != self.last[i] {
                        tracing::info!(
                            entry = %entry.name,
                            addresses = ?found.iter().map(|b| b.addr).collect::<Vec<_>>(),
                            "DNS backends changed"
                        );
                        self.last[i] = found;
                        changed = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(entry = %entry.name, error = %e, "DNS lookup failed; keeping the last addresses")
                }
            }
        }
        changed
    }

    /// Re-resolves every `interval` until shutdown.
    fn spawn(
        mut self,
        balancer: Arc<Balancer>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
                self.refresh(&balancer).await;
            }
        })
    }
}

/// The backends one entry resolves to now. No records = none (the name is gone);
/// any other failure is an error (the caller keeps the last good answer).
async fn resolve(r: &TokioResolver, e: &DnsBackend) -> anyhow::Result<Vec<BackendSpec>> {
    let spec = |addr: SocketAddr, weight: u32, backup: bool| BackendSpec {
        id: format!("{}@{}", e.name, addr),
        addr,
        weight,
        backup,
    };
    match &e.query {
        DnsQuery::Host { host, port } => Ok(ips(r, host)
            .await?
            .into_iter()
            .map(|ip| spec(SocketAddr::new(ip, *port), e.weight, e.backup))
            .collect()),
        DnsQuery::Srv(name) => {
            let lookup = match r.srv_lookup(name.as_str()).await {
                Ok(l) => l,
                Err(err) if err.is_no_records_found() => return Ok(Vec::new()),
                Err(err) => return Err(err.into()),
            };
            let records: Vec<_> = lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .collect();
            // The lowest priority is served; higher ones are backups (RFC 2782 order).
            let best = records.iter().map(|s| s.priority).min().unwrap_or(0);
            let mut out = Vec::new();
            for srv in records {
                let target = srv.target.to_utf8();
                for ip in ips(r, target.trim_end_matches('.')).await? {
                    out.push(spec(
                        SocketAddr::new(ip, srv.port),
                        u32::from(srv.weight).clamp(1, 10_000),
                        e.backup || srv.priority > best,
                    ));
                }
            }
            Ok(out)
        }
    }
}

async fn ips(r: &TokioResolver, host: &str) -> anyhow::Result<Vec<IpAddr>> {
    // A literal address needs no lookup (an SRV target may be one).
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match r.lookup_ip(host).await {
        Ok(found) => {
            let mut v: Vec<IpAddr> = found.iter().collect();
            v.sort();
            v.dedup();
            Ok(v)
        }
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

//! `GET /metrics`: everything drove counts, in Prometheus' text format.
//!
//! Collection happens at scrape time: each component's collector reads the counters the
//! data path and the supervisor already keep (relaxed atomics, the per-backend latency
//! buckets, `Supervisor::status`) and encodes them. Nothing here adds work per request:
//! the request-duration histogram is the balancer's own bucket counts re-encoded, not a
//! second histogram on the hot path.
//!
//! Each component registers its collector in its own function ([`register_proxy_metrics`],
//! [`register_balancer_metrics`], [`register_supervisor_metrics`]). Names are `drove_*`;
//! per-instance series carry `service` and `instance` labels. docs/metrics.md lists them.
//!
//! prometheus-client writes OpenMetrics. Prometheus asks for that in its `Accept` header
//! and gets it as is; anyone else (curl, `promtool check metrics`, older scrapers) gets
//! the classic text format 0.0.4, where a counter's `# TYPE` line names the `_total`
//! series ([`to_classic_text`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use drove_balancer::{Balancer, LATENCY_BUCKETS};
use drove_proxy::{PanicSite, ProxyStats};
use drove_supervisor::{InstanceState, InstanceStatus, Supervisor};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::Running;

/// Content type of the classic Prometheus text format.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every lifecycle state, so `drove_instance_state` has one series per state (0 or 1),
/// as kube-state-metrics does: an alert on `{state="crashloop"} == 1` then sees a 0
/// rather than nothing while all is well.
const STATES: [InstanceState; 9] = [
    InstanceState::Starting,
    InstanceState::Ready,
    InstanceState::Draining,
    InstanceState::Drained,
    InstanceState::Stopping,
    InstanceState::Stopped,
    InstanceState::Backoff,
    InstanceState::Crashloop,
    InstanceState::Exited,
];

/// The `service` label of static (not supervised) backends.
pub const STATIC_SERVICE: &str = "static";

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// The registry behind `/metrics`, and the instance list its supervisor collector reads.
pub struct Metrics {
    registry: Registry,
    supervisor: Supervisor,
    instances: Arc<Mutex<Vec<InstanceStatus>>>,
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// Registers every running component's metrics.
    pub fn new(r: &Running) -> Metrics {
        let mut registry = Registry::with_prefix("drove");
        registry.register_collector(Box::new(BuildInfo));
        register_panic_metrics(&mut registry, r.proxy.as_ref().map(|p| p.stats().clone()));
        if let Some(p) = &r.proxy {
            register_proxy_metrics(&mut registry, p.stats().clone());
            register_limit_metrics(&mut registry, p.clone());
        }
        if let Some(b) = &r.balancer {
            register_balancer_metrics(&mut registry, b.clone(), r.balanced.clone());
        }
        let instances = register_supervisor_metrics(&mut registry, r.config.clone());
        Metrics {
            registry,
            supervisor: r.supervisor.clone(),
            instances,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Collects now and encodes: OpenMetrics when `openmetrics`, else the classic format.
    pub async fn render(&self, openmetrics: bool) -> String {
        // One scrape at a time, so each encodes the instance list it read.
        let _one = self.scrape.lock().await;
        let status = self.supervisor.status().await;
        *self.instances.lock().unwrap_or_else(|e| e.into_inner()) = status;
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        if openmetrics {
            out
        } else {
            to_classic_text(&out)
        }
    }
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus 2.5+ does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// OpenMetrics text → classic Prometheus text 0.0.4: no `# EOF`/`# UNIT`, and a counter
/// family `x` (samples `x_total`) is described as `x_total`, which is what the classic
/// parsers and `promtool check metrics` expect.
pub fn to_classic_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (name, ty) = match ty {
                "counter" => (Cow::Owned(format!("{name}_total")), "counter"),
                "info" => (Cow::Owned(format!("{name}_info")), "gauge"),
                "stateset" => (Cow::Borrowed(name), "gauge"),
                "unknown" => (Cow::Borrowed(name), "untyped"),
                "gaugehistogram" => (Cow::Borrowed(name), "histogram"),
                t => (Cow::Borrowed(name), t),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {ty}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// Encoding helpers: one family per call, one series per item.

fn counter<'a, V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        // No labels: `name_total 3`, not `name_total{} 3`.
        if labels.is_empty() {
            m.encode_counter::<(), _, u64>(&v, None)?;
        } else {
            m.encode_family(&labels)?
                .encode_counter::<(), _, u64>(&v, None)?;
        }
    }
    Ok(())
}

fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_gauge(&v)?;
        } else {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

fn no_labels() -> Labels<'static> {
    Vec::new()
}

fn bool_f64(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// `drove_build_info{version} 1`.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let labels: Labels = vec![("version", Cow::Borrowed(env!("CARGO_PKG_VERSION")))];
        gauge(
            &mut enc,
            "build_info",
            "drove's version (always 1).",
            [(labels, 1.0)],
        )
    }
}

/// Registers `drove_panics_total{where}`: bugs drove contained, by the part they cost
/// (`request`, `connection`, `worker`: the data path; `supervisor`; `runtime`). Every
/// series is always present, so an alert on `increase(...) > 0` sees zeros meanwhile.
pub fn register_panic_metrics(registry: &mut Registry, proxy: Option<Arc<ProxyStats>>) {
    registry.register_collector(Box::new(PanicCollector(proxy)));
}

#[derive(Debug)]
struct PanicCollector(Option<Arc<ProxyStats>>);

impl Collector for PanicCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let proxy = PanicSite::ALL.iter().map(|site| {
            let n = self.0.as_ref().map_or(0, |s| s.panics(*site));
            (vec![("where", Cow::Borrowed(site.as_str()))], n)
        });
        let others = [
            ("supervisor", drove_supervisor::panics_contained()),
            ("runtime", crate::contain::panics_contained()),
        ]
        .map(|(w, n)| (vec![("where", Cow::Borrowed(w))], n));
        counter(
            &mut enc,
            "panics",
            "Panics (bugs in drove) contained, by the part each one cost: a request (answered 500 if nothing was sent yet), a connection, a proxy worker's connections (the worker starts again), or a supervisor or runtime task (started again). Instances are never touched.",
            proxy.chain(others),
        )
    }
}

// ---------------------------------------------------------------------------------------
// The data path (drove-proxy): what clients sent and got, drove's own answers included.

/// Registers the data path's counters (`drove_balancer_*`): requests and responses as
/// clients saw them (drove's own 503/400/413 included), retries, the retry budget,
/// upstream errors, client connections.
pub fn register_proxy_metrics(registry: &mut Registry, stats: Arc<ProxyStats>) {
    registry.register_collector(Box::new(ProxyCollector(stats)));
}

#[derive(Debug)]
struct ProxyCollector(Arc<ProxyStats>);

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        counter(
            &mut enc,
            "balancer_requests",
            "Requests received from clients, including those drove rejected itself.",
            [(no_labels(), s.requests.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "balancer_responses",
            "Responses sent to clients by status class, including drove's own (503 when no instance is available, 400/413 for bad requests, 502/504).",
            CLASSES.iter().enumerate().map(|(i, c)| {
                let l: Labels = vec![("class", Cow::Borrowed(*c))];
                (l, s.responses[i].load(Relaxed))
            }),
        )?;
        let totals: [(&str, &str, u64); 8] = [
            (
                "balancer_retries",
                "Requests sent again to another instance.",
                s.retries.load(Relaxed),
            ),
            (
                "balancer_retry_budget_exhausted",
                "Retries not made because the retry budget (a share of live traffic) was spent.",
                s.retry_budget_exhausted.load(Relaxed),
            ),
            (
                "balancer_upstream_connect_errors",
                "Connections to instances that could not be made.",
                s.connect_errors.load(Relaxed),
            ),
            (
                "balancer_upstream_timeouts",
                "Tries on an instance that got no response head in time.",
                s.timeouts.load(Relaxed),
            ),
            (
                "balancer_no_backend",
                "Requests answered 503 because no instance was available.",
                s.no_backend.load(Relaxed),
            ),
            (
                "balancer_rejected",
                "Requests rejected before reaching an instance (400, 413).",
                s.rejected.load(Relaxed),
            ),
            (
                "balancer_rate_limited",
                "Requests refused by a rate limit (429).",
                s.rate_limited.load(Relaxed),
            ),
            (
                "balancer_connections",
                "Client connections accepted.",
                s.connections.load(Relaxed),
            ),
        ];
        for (name, help, v) in totals {
            counter(&mut enc, name, help, [(no_labels(), v)])?;
        }
        gauge(
            &mut enc,
            "balancer_connections_active",
            "Client connections open now.",
            [(
                no_labels(),
                s.active_connections.load(Relaxed).max(0) as f64,
            )],
        )?;
        gauge(
            &mut enc,
            "balancer_tunnels_active",
            "Upgraded connections (WebSocket) open now.",
            [(no_labels(), s.active_tunnels.load(Relaxed).max(0) as f64)],
        )
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Registers `drove_limit_redis_fallbacks_total{limit}` for the limits shared through
/// Redis: checks decided by this process alone because Redis failed or was too slow.
/// The limits are read at each scrape (a reload may add or remove them); the family is
/// absent while there is none.
pub fn register_limit_metrics(registry: &mut Registry, proxy: drove_proxy::Proxy) {
    registry.register_collector(Box::new(LimitCollector(proxy)));
}

#[derive(Debug)]
struct LimitCollector(drove_proxy::Proxy);

impl Collector for LimitCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut shared: Vec<(String, Arc<drove_limits::Limit>)> = Vec::new();
        for r in self.0.routes() {
            if matches!(*r.limiter, drove_limits::Limit::Shared(_))
                && !shared.iter().any(|(n, _)| *n == r.name)
            {
                shared.push((r.name.clone(), r.limiter.clone()));
            }
        }
        if shared.is_empty() {
            return Ok(());
        }
        counter(
            &mut enc,
            "limit_redis_fallbacks",
            "Rate-limit checks decided by this process alone because Redis failed or did not answer within 50 ms.",
            shared.iter().filter_map(|(name, l)| match &**l {
                drove_limits::Limit::Shared(s) => {
                    let labels: Labels = vec![("limit", Cow::Owned(name.clone()))];
                    Some((labels, s.fallbacks.load(Relaxed)))
                }
                drove_limits::Limit::Local(_) => None,
            }),
        )
    }
}

// ---------------------------------------------------------------------------------------
// The balancer (drove-balancer): per-instance traffic, latency and health.

/// Registers the balancer's per-backend metrics (labels `service`, `instance`):
/// `drove_requests_total{class}`, `drove_request_duration_seconds`, attempts, failures,
/// ejections, in-flight, health and rotation; and how many backends are available.
/// `service` is the balanced service ([`STATIC_SERVICE`] for static backends).
pub fn register_balancer_metrics(
    registry: &mut Registry,
    balancer: Arc<Balancer>,
    service: crate::BalancedService,
) {
    registry.register_collector(Box::new(BalancerCollector { balancer, service }));
}

#[derive(Debug)]
struct BalancerCollector {
    balancer: Arc<Balancer>,
    /// Read at each scrape: a reload may switch what the balancer routes to.
    service: crate::BalancedService,
}

impl Collector for BalancerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let backends = self.balancer.snapshot();
        let service = self
            .service
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| STATIC_SERVICE.to_string());
        let labels = |id: &str| -> Labels<'static> {
            vec![
                ("service", Cow::Owned(service.clone())),
                ("instance", Cow::Owned(id.to_string())),
            ]
        };
        let snaps: Vec<_> = backends
            .iter()
            .map(|b| (b, b.responses().snapshot()))
            .collect();

        counter(
            &mut enc,
            "requests",
            "Responses relayed from each instance to clients, by status class.",
            snaps.iter().flat_map(|(b, s)| {
                CLASSES.iter().enumerate().map(move |(i, c)| {
                    let mut l = labels(b.id());
                    l.push(("class", Cow::Borrowed(*c)));
                    (l, s.classes[i])
                })
            }),
        )?;

        {
            let mut m = enc.encode_descriptor(
                "request_duration_seconds",
                "Time from receiving a request to relaying the instance's response head, retries included.",
                None,
                MetricType::Histogram,
            )?;
            for (b, s) in &snaps {
                // prometheus-client wants per-bucket counts, +Inf as f64::MAX.
                let mut prev = 0;
                let buckets: Vec<(f64, u64)> = s
                    .cumulative
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let upper = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::MAX);
                        let n = c.saturating_sub(prev);
                        prev = c;
                        (upper, n)
                    })
                    .collect();
                let l = labels(b.id());
                m.encode_family(&l)?.encode_histogram::<()>(
                    s.sum_seconds,
                    s.count(),
                    &buckets,
                    None,
                )?;
            }
        }

        counter(
            &mut enc,
            "backend_attempts",
            "Tries started on each instance (retries and failed tries included).",
            backends.iter().map(|b| (labels(b.id()), b.requests())),
        )?;
        counter(
            &mut enc,
            "backend_failures",
            "Tries that failed on each instance (connect error, timeout, broken connection, 5xx when they count).",
            backends.iter().map(|b| (labels(b.id()), b.failures())),
        )?;
        counter(
            &mut enc,
            "backend_ejections",
            "Times each instance was taken out of rotation by passive health (max_fails within fail_timeout).",
            backends.iter().map(|b| (labels(b.id()), b.ejections())),
        )?;
        gauge(
            &mut enc,
            "backend_in_flight",
            "Requests (and tunnels) in flight on each instance now.",
            backends
                .iter()
                .map(|b| (labels(b.id()), b.in_flight() as f64)),
        )?;
        gauge(
            &mut enc,
            "backend_healthy",
            "1 when the instance passes its health probes and is not passively ejected.",
            backends
                .iter()
                .map(|b| (labels(b.id()), bool_f64(b.probe_up() && b.is_healthy_now()))),
        )?;
        gauge(
            &mut enc,
            "backend_enabled",
            "1 when the instance is in rotation as far as drain/undrain is concerned.",
            backends
                .iter()
                .map(|b| (labels(b.id()), bool_f64(b.is_enabled()))),
        )?;
        let svc: Labels = vec![("service", Cow::Owned(service.clone()))];
        gauge(
            &mut enc,
            "balancer_backends",
            "Instances known to the balancer.",
            [(svc.clone(), backends.len() as f64)],
        )?;
        gauge(
            &mut enc,
            "balancer_backends_available",
            "Instances that may get a new request now (in rotation and healthy). 0 means clients get 503.",
            [(
                svc,
                backends
                    .iter()
                    .filter(|b| b.is_enabled() && b.probe_up() && b.is_healthy_now())
                    .count() as f64,
            )],
        )
    }
}

// ---------------------------------------------------------------------------------------
// The supervisor (drove-supervisor): processes.

/// Registers the supervisor's per-instance metrics (labels `service`, `instance`):
/// state, restarts, RSS, CPU, uptime, and `max_memory` where set. They are read from
/// the slot this returns, which the scrape fills with `Supervisor::status` just before
/// encoding (that call is async; a collector is not).
pub fn register_supervisor_metrics(
    registry: &mut Registry,
    config: Arc<arc_swap::ArcSwap<drove_config::Config>>,
) -> Arc<Mutex<Vec<InstanceStatus>>> {
    let instances = Arc::new(Mutex::new(Vec::new()));
    registry.register_collector(Box::new(SupervisorCollector {
        instances: instances.clone(),
        config,
    }));
    instances
}

#[derive(Debug)]
struct SupervisorCollector {
    instances: Arc<Mutex<Vec<InstanceStatus>>>,
    /// The config in force, for `max_memory` (a reload may change it).
    config: Arc<arc_swap::ArcSwap<drove_config::Config>>,
}

impl Collector for SupervisorCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let list = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let config = self.config.load();
        let labels = |s: &InstanceStatus| -> Labels<'static> {
            vec![
                ("service", Cow::Owned(s.id.service.clone())),
                ("instance", Cow::Owned(s.id.to_string())),
            ]
        };
        gauge(
            &mut enc,
            "instance_state",
            "1 for the state each instance is in, 0 for the others.",
            list.iter().flat_map(|s| {
                let mut states: Vec<InstanceState> = STATES.to_vec();
                if !states.contains(&s.state) {
                    states.push(s.state);
                }
                states.into_iter().map(move |st| {
                    let mut l = labels(s);
                    l.push(("state", Cow::Owned(st.to_string())));
                    (l, bool_f64(st == s.state))
                })
            }),
        )?;
        counter(
            &mut enc,
            "instance_restarts",
            "Processes started in each instance slot after its first (crashes, health and max_memory restarts).",
            list.iter().map(|s| (labels(s), u64::from(s.restarts))),
        )?;
        gauge(
            &mut enc,
            "instance_rss_bytes",
            "Resident memory of each instance's process group.",
            list.iter()
                .filter_map(|s| Some((labels(s), s.rss_bytes? as f64))),
        )?;
        counter(
            &mut enc,
            "instance_cpu_seconds",
            "User + system CPU time of each instance's live processes.",
            list.iter()
                .filter_map(|s| Some((labels(s), s.cpu_seconds?))),
        )?;
        gauge(
            &mut enc,
            "instance_uptime_seconds",
            "Time since each instance's current process started.",
            list.iter()
                .filter_map(|s| Some((labels(s), s.uptime?.as_secs_f64()))),
        )?;
        gauge(
            &mut enc,
            "instance_max_memory_bytes",
            "The service's max_memory: above this RSS an instance is restarted (only for services that set it).",
            list.iter().filter_map(|s| {
                let max = config.service(&s.id.service)?.max_memory?;
                Some((labels(s), max as f64))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let open = "# HELP drove_requests Requests.\n# TYPE drove_requests counter\ndrove_requests_total{class=\"2xx\"} 3\n# HELP drove_up Up.\n# TYPE drove_up gauge\n# UNIT drove_up seconds\ndrove_up 1.0\n# EOF\n";
        assert_eq!(
            to_classic_text(open),
            "# HELP drove_requests_total Requests.\n# TYPE drove_requests_total counter\ndrove_requests_total{class=\"2xx\"} 3\n# HELP drove_up Up.\n# TYPE drove_up gauge\ndrove_up 1.0\n"
        );
    }

    #[test]
    fn backend_buckets_are_encoded_as_a_cumulative_histogram() {
        let b = Balancer::new(drove_balancer::BalancerSettings::default());
        b.set_backends(vec![drove_balancer::BackendSpec {
            id: "web.1".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            weight: 1,
            backup: false,
        }]);
        let be = b.find("web.1").unwrap();
        for ms in [1, 1, 3, 40, 2000, 60_000] {
            be.responses().record(
                if ms == 40 { 503 } else { 200 },
                std::time::Duration::from_millis(ms),
            );
        }
        let mut reg = Registry::with_prefix("drove");
        register_balancer_metrics(
            &mut reg,
            b.clone(),
            Arc::new(std::sync::RwLock::new(Some("web".into()))),
        );
        let mut open = String::new();
        prometheus_client::encoding::text::encode(&mut open, &reg).unwrap();
        let text = to_classic_text(&open);
        let l = r#"service="web",instance="web.1""#;
        for line in [
            format!("drove_requests_total{{{l},class=\"2xx\"}} 5"),
            format!("drove_requests_total{{{l},class=\"5xx\"}} 1"),
            format!("drove_request_duration_seconds_count{{{l}}} 6"),
            format!("drove_request_duration_seconds_bucket{{le=\"0.001\",{l}}} 2"),
            format!("drove_request_duration_seconds_bucket{{le=\"0.005\",{l}}} 3"),
            format!("drove_request_duration_seconds_bucket{{le=\"0.05\",{l}}} 4"),
            format!("drove_request_duration_seconds_bucket{{le=\"2.5\",{l}}} 5"),
            format!("drove_request_duration_seconds_bucket{{le=\"30.0\",{l}}} 5"),
            format!("drove_request_duration_seconds_bucket{{le=\"+Inf\",{l}}} 6"),
            format!("drove_backend_healthy{{{l}}} 1.0"),
            "drove_balancer_backends_available{service=\"web\"} 1.0".to_string(),
            "# TYPE drove_requests_total counter".to_string(),
            "# TYPE drove_request_duration_seconds histogram".to_string(),
        ] {
            assert!(text.lines().any(|x| x == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}

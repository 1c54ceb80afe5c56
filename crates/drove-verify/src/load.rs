//! Load from the bench engine while a drill acts: the load starts, the action runs after
//! a short warm-up, and the load goes on for at least the drill's duration and a little
//! after the action ends, so what the action breaks shows up in the counts.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use drove_bench::{BenchOptions, Model, Report, Stop};
use tokio::time::{sleep, sleep_until, Instant};

/// Load runs this long before the action, so it hits a fleet already under load.
pub(crate) const WARMUP: Duration = Duration::from_millis(500);
/// And this long after the action, so a late failure is still counted.
const TAIL: Duration = Duration::from_millis(500);
/// No drill's load runs longer than this, whatever its action does.
const MAX_LOAD: Duration = Duration::from_secs(600);

/// What load to run.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub balancer: SocketAddr,
    pub path: String,
    pub model: Model,
    pub connections: usize,
    /// Minimum length of the load.
    pub min: Duration,
    pub instance_header: Option<String>,
    /// Per-request timeout: long enough that a request held by a frozen instance until the
    /// balancer's per-try timeout shows as slow, not as a client-side timeout.
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
}

impl LoadSpec {
    pub fn options(&self, stop: Stop) -> Result<BenchOptions, String> {
        let url = format!("http://{}{}", self.balancer, self.path);
        let mut o = BenchOptions::new(&url).map_err(|e| e.to_string())?;
        o.model = self.model;
        o.connections = self.connections.max(1);
        o.stop = stop;
        o.timeout = self.timeout;
        o.headers = self.headers.clone();
        if let Some(h) = &self.instance_header {
            o.instance_header = h.clone();
        }
        // The generator must not be the bottleneck of a closed run on a many-core box.
        o.threads = if self.model == Model::Closed { 2 } else { 1 };
        Ok(o)
    }
}

/// Runs `action` under the load: returns the load's report and the action's output.
pub(crate) async fn under_load<F: Future>(
    spec: &LoadSpec,
    action: F,
) -> Result<(Report, F::Output), String> {
    let opts = spec.options(Stop::Duration(MAX_LOAD))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let bench = drove_bench::run(opts, None, async move {
        let _ = rx.await;
    });
    let act = async move {
        sleep(WARMUP).await;
        let out = action.await;
        let end = (start + spec.min).max(Instant::now() + TAIL);
        sleep_until(end).await;
        let _ = tx.send(());
        out
    };
    let (report, out) = tokio::join!(bench, act);
    let report = report.map_err(|e| format!("load: {e}"))?;
    Ok((report, out))
}

/// A load with no action: runs to its own end.
pub(crate) async fn plain(spec: &LoadSpec, stop: Stop) -> Result<Report, String> {
    let opts = spec.options(stop)?;
    drove_bench::run(opts, None, std::future::pending::<()>())
        .await
        .map_err(|e| format!("load: {e}"))
}

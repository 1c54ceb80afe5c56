//! `drove bench URL`: the command-line face of `drove-bench` (flags, live progress line,
//! summary, JSON/HTML output, `--fail-if` exit code). All measuring is in the library.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use drove_bench::{BenchOptions, Model, Progress, Stop};

/// Exit code when `--fail-if` conditions hold.
const EXIT_FAIL_IF: i32 = 3;
/// Exit code for bad arguments or a target that cannot be reached at start.
const EXIT_USAGE: i32 = 2;

/// Load-test an HTTP endpoint: closed model (as fast as N connections allow) or open
/// model (`--rate`, constant arrival rate with coordinated-omission-corrected latency).
///
/// Examples:
///   drove bench http://127.0.0.1:8080/
///   drove bench http://127.0.0.1:8080/api --rate 2000 -d 30s -c 128 --fail-if 'p99>50ms,errors>0'
///   drove bench http://127.0.0.1:8080/ -n 10000 --json > run.json
///
/// Ctrl-C stops early and still prints the report.
/// Exit codes: 0 done, 2 bad arguments or target unreachable, 3 a --fail-if condition held.
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct BenchArgs {
    /// Target URL, plain HTTP only: `http://host[:port]/path?query`.
    #[arg(value_name = "URL")]
    pub url: String,

    /// Concurrent connections. In the open model (`--rate`) this caps the requests in
    /// flight: when all are busy, due requests wait (and their latency shows it).
    #[arg(short = 'c', long, default_value_t = 64, value_name = "N")]
    pub connections: usize,

    /// How long to send requests, e.g. `500ms`, `30s`, `1m` (a bare number is seconds).
    /// Requests in flight at the end finish within `--timeout`.
    #[arg(short = 'd', long, default_value = "10s", value_parser = crate::parse_duration_arg, value_name = "DURATION")]
    pub duration: Duration,

    /// Send exactly this many requests instead of running for `--duration`.
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Open model: send R requests per second in total, on a fixed schedule, whatever
    /// the server does. A request that has to wait for a free connection is measured
    /// from its scheduled time ("corrected": server stalls are not hidden); the summary
    /// also shows latency from the actual send. Requests due but never sent are counted.
    /// Without `--rate`, each connection sends its next request as soon as the previous
    /// response arrives.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET", value_name = "METHOD")]
    pub method: String,

    /// Extra request header, `'Name: value'`; repeat for more. A `Host` header here
    /// replaces the one taken from the URL.
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,

    /// Request body, sent with every request (sets Content-Length).
    #[arg(long, value_name = "STRING", conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Request body read from a file, sent with every request.
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,

    /// Open a new connection for every request (sent with `Connection: close`), as
    /// clients without connection reuse do; measures connection setup too.
    #[arg(long)]
    pub no_keepalive: bool,

    /// Per-request timeout, from send to the end of the response (connect included).
    /// A request that takes longer counts as a `timeout` error.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration_arg, value_name = "DURATION")]
    pub timeout: Duration,

    /// Worker threads, each with its share of the connections. One thread usually
    /// saturates a local server; add threads when the generator itself is the limit.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,

    /// Response header naming the instance that served each request; the summary
    /// counts responses per instance and tests whether the shares are equal
    /// (chi-square). drove's balancer sets it.
    #[arg(long, default_value = drove_bench::DEFAULT_INSTANCE_HEADER, value_name = "NAME")]
    pub instance_header: String,

    /// Print the report as JSON on stdout instead of the text summary
    /// (durations in milliseconds).
    #[arg(long)]
    pub json: bool,

    /// Also write a self-contained HTML report (tables and SVG plots of latency over
    /// time and by percentile; no scripts, no network) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Exit with code 3 if any condition holds, e.g. `'p99>50ms,errors>0,rps<1000'`.
    /// Metrics: p50 p90 p99 p999 max mean (corrected latency; value needs a unit: us,
    /// ms, s), rps, requests, errors, error_rate (percent: `error_rate>1%`), unsent,
    /// chi_square_p. Operators: > >= < <= == !=.
    #[arg(long, value_name = "EXPR")]
    pub fail_if: Option<String>,

    /// No live progress line and no summary; only `--json`, `--html` output and
    /// `--fail-if` violations.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Runs `drove bench`; returns the process exit code: 0, 2 (bad arguments or target
/// unreachable at start) or 3 (`--fail-if` violated).
pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let (opts, conditions) = match options(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("drove bench: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        if let Err(e) = preflight(&opts).await {
            eprintln!("drove bench: {e:#}");
            return Ok(EXIT_USAGE);
        }
        let live = !args.quiet && std::io::stderr().is_terminal();
        let (tx, rx) = tokio::sync::watch::channel(Progress::default());
        let printer = live.then(|| tokio::spawn(print_progress(rx)));
        let cancel = async {
            // If the handler cannot be installed, run to the end instead of stopping at once.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let report = drove_bench::run(opts, Some(tx), cancel).await;
        if let Some(p) = printer {
            let _ = p.await;
            eprint!("\r\x1b[2K");
        }
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("drove bench: {e}");
                return Ok(EXIT_USAGE);
            }
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        } else if !args.quiet {
            print!("{}", report.to_text());
        }
        if let Some(path) = &args.html {
            std::fs::write(path, report.to_html())
                .with_context(|| format!("writing the HTML report to {}", path.display()))?;
            if !args.quiet && !args.json {
                println!("  html       {}", path.display());
            }
        }
        let violations = report.check(&conditions);
        if violations.is_empty() {
            return Ok(0);
        }
        for v in &violations {
            eprintln!("drove bench: fail-if: {v}");
        }
        Ok(EXIT_FAIL_IF)
    })
}

fn options(args: &BenchArgs) -> anyhow::Result<(BenchOptions, Vec<drove_bench::Condition>)> {
    let mut o = BenchOptions::new(&args.url)?;
    o.method = drove_bench::http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("invalid method {:?}", args.method))?;
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?}: expected 'Name: value'"))?;
        o.headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(b) = &args.body {
        o.body = drove_bench::bytes::Bytes::from(b.clone().into_bytes());
    }
    if let Some(path) = &args.body_file {
        let b = std::fs::read(path)
            .with_context(|| format!("reading --body-file {}", path.display()))?;
        o.body = b.into();
    }
    o.connections = args.connections;
    o.stop = match args.requests {
        Some(n) => Stop::Requests(n),
        None => Stop::Duration(args.duration),
    };
    if let Some(rate) = args.rate {
        o.model = Model::Open { rate };
    }
    o.keep_alive = !args.no_keepalive;
    o.timeout = args.timeout;
    o.threads = args.threads;
    o.instance_header = args.instance_header.clone();
    o.validate()?;
    if let Some(path) = &args.html {
        // Fail before a long run, not after it.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            anyhow::bail!("--html {}: directory does not exist", path.display());
        }
    }
    let conditions = match &args.fail_if {
        Some(e) => drove_bench::parse_fail_if(e).context("--fail-if")?,
        None => Vec::new(),
    };
    Ok((o, conditions))
}

/// One connection before the run, so a wrong port is a clear error (exit 2), not a
/// report full of connect errors.
async fn preflight(o: &BenchOptions) -> anyhow::Result<()> {
    let authority = o.url.authority().context("URL has no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    match tokio::time::timeout(o.timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot connect to {host}:{port}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to {host}:{port}: no answer within {:?}",
            o.timeout
        )),
    }
}

/// `\r`-updated status line on stderr, once per second.
async fn print_progress(mut rx: tokio::sync::watch::Receiver<Progress>) {
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K  {:>4}s  {:>9.0} req/s  p99 {:>8}  errors {:<8} total {}",
            p.elapsed.as_secs(),
            p.rps,
            fmt_ms(p.p99),
            p.errors,
            p.requests
        );
        let _ = err.flush();
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1e3)
}

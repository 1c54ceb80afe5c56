//! `drove verify`: drills under load against a running drove (or one it starts from a
//! config), one line of numbers and a verdict per drill, exit 1 if any fails. The drills
//! live in `drove-verify`; this module reads the config file for what the status API
//! does not say (sticky cookie, rate limits, instance header, token), decides which drove
//! to verify, and renders the results.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use drove_verify::{Drill, LimitKey, LimitRule, Target, VerifyOptions};

/// `drove verify` flags (the command's help text is on `Command::Verify` in main.rs).
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Drills, in order: health, distribution, metrics, stickiness, sessions, limits,
failover (SIGKILL), freeze (SIGSTOP), restart (rolling), scale (N+1 and back).
Without --start: the drove at --admin (default: the config's [admin] listen, else
127.0.0.1:9900); with no drove.toml here and none running, the built-in demo is started.
See docs/verify.md.

Examples:
  drove verify                                  # the running drove, or the demo
  drove verify --start -c drove.toml --junit verify.xml
  drove verify --only failover,freeze --rate 1000 --duration 5s"
)]
pub struct VerifyArgs {
    /// Start a drove from -c FILE (the built-in demo if there is no drove.toml) on free
    /// ports, verify it, stop it.
    #[arg(long)]
    pub start: bool,

    /// Print the results as one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,

    /// Also write the results as JUnit XML (one testcase per drill) to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,

    /// Run only these drills (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DRILLS", value_parser = parse_drill)]
    pub only: Vec<Drill>,

    /// Do not run these drills (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DRILLS", value_parser = parse_drill)]
    pub skip: Vec<Drill>,

    /// Load duration of each drill (longer when its action takes longer).
    #[arg(short = 'd', long, default_value = "3s", value_parser = crate::parse_duration_arg, value_name = "DURATION")]
    pub duration: Duration,

    /// Rate of the open-model load under failover, freeze, restart, scale, stickiness
    /// and sessions, in requests per second.
    #[arg(long, default_value_t = 300.0, value_name = "R")]
    pub rate: f64,

    /// Connections of the distribution load (and at least 64 under the open model).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub connections: usize,

    /// Path requested through the balancer. (The field has its own name: `-c FILE` is
    /// flattened into the same command under the id `path`.)
    #[arg(long = "path", default_value = "/", value_name = "PATH")]
    pub load_path: String,

    /// Fail the stickiness drill when no sticky cookie shows up (instead of skipping).
    #[arg(long)]
    pub expect_sticky: bool,

    /// Name of the sticky cookie (default: the config's `sticky.cookie`, else detected).
    #[arg(long, value_name = "NAME")]
    pub sticky_cookie: Option<String>,

    /// Response header naming the instance (default: the config's `instance_header`,
    /// else X-Drove-Instance or the demo's X-Demo-Instance when responses carry one).
    #[arg(long, value_name = "NAME")]
    pub instance_header: Option<String>,

    /// Distribution (round robin): smallest chi-square p-value that passes.
    #[arg(long, default_value_t = 0.001, value_name = "P")]
    pub p_min: f64,

    /// Metrics: requests of the counted run.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub metrics_requests: u64,

    /// How long to wait for instances to be ready (at the start, between drills, and for
    /// one to come back).
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration_arg, value_name = "DURATION")]
    pub settle_timeout: Duration,
}

fn parse_drill(s: &str) -> Result<Drill, String> {
    s.parse()
}

/// What the config file says that the status API does not.
fn options(args: &VerifyArgs, config: Option<&drove_config::Config>) -> VerifyOptions {
    let balancer = config.and_then(|c| c.balancer.as_ref());
    let mut limits = Vec::new();
    if let Some(c) = config {
        for route in balancer.map(|b| b.routes.as_slice()).unwrap_or_default() {
            if let Some(l) = c.limits.get(&route.limit) {
                limits.push(LimitRule {
                    name: route.limit.clone(),
                    path: route.path.clone(),
                    rate_per_sec: l.rate.count as f64
                        / l.rate.per.as_secs_f64().max(f64::MIN_POSITIVE),
                    burst: l.burst,
                    key: match &l.key {
                        drove_config::LimitKey::ClientIp => LimitKey::ClientIp,
                        drove_config::LimitKey::Header(h) => LimitKey::Header(h.clone()),
                        drove_config::LimitKey::Cookie(c) => LimitKey::Cookie(c.clone()),
                    },
                });
            }
        }
    }
    let sticky = balancer
        .and_then(|b| b.sticky.as_ref())
        .map(|s| s.cookie.clone());
    VerifyOptions {
        duration: args.duration,
        rate: args.rate,
        connections: args.connections,
        path: args.load_path.clone(),
        only: args.only.clone(),
        skip: args.skip.clone(),
        expect_sticky: args.expect_sticky || sticky.is_some(),
        sticky_cookie: args.sticky_cookie.clone().or(sticky),
        instance_header: args.instance_header.clone().or_else(|| {
            balancer
                .and_then(|b| b.instance_header.clone())
                .filter(|h| !h.is_empty())
        }),
        limits,
        config_read: config.is_some(),
        p_min: args.p_min,
        metrics_requests: args.metrics_requests,
        settle_timeout: args.settle_timeout,
    }
}

/// Runs the drills; returns the exit code.
pub fn run(
    args: VerifyArgs,
    config: &Path,
    admin: Option<SocketAddr>,
    token: Option<&str>,
) -> anyhow::Result<u8> {
    if !args.rate.is_finite() || args.rate <= 0.0 {
        anyhow::bail!("--rate must be a positive number of requests per second");
    }
    let default_config = config == Path::new("drove.toml");
    let file = if config.exists() {
        match drove_config::load(config) {
            Ok(c) => Some(c),
            Err(errors) => {
                eprintln!("{errors}");
                anyhow::bail!("{} has errors (see `drove check`)", config.display());
            }
        }
    } else if default_config {
        None
    } else {
        anyhow::bail!("config file {} not found", config.display());
    };
    let token = token
        .map(str::to_string)
        .or_else(|| file.as_ref().and_then(|c| c.admin.token.clone()));
    let rt = tokio::runtime::Runtime::new()?;
    // Messages about what is being verified go to stderr with --json, so stdout stays JSON.
    let say = |s: &str| {
        if args.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };

    let mut launched = None;
    // The built-in demo, when that is what runs: its config says what status does not.
    let mut demo = None;
    let target = if args.start {
        if let Some(c) = &file {
            refuse_taken_ports(c, config)?;
        }
        if file.is_none() {
            demo = Some(builtin_demo()?);
        }
        let what = if file.is_some() {
            config.display().to_string()
        } else {
            "the built-in demo".into()
        };
        launched = Some(start(config, &what, &say)?);
        let l = launched.as_ref().expect("just set");
        Target {
            admin: l.admin,
            listen: l.listen,
            token: token.clone(),
        }
    } else {
        let addr = admin.unwrap_or_else(|| {
            file.as_ref().map_or_else(
                || drove_config::AdminConfig::default().listen,
                |c| c.admin.listen,
            )
        });
        let probed = rt.block_on(drove_verify::probe(addr, token.as_deref()));
        let nothing_there = matches!(probed, Err(drove_verify::ProbeError::NothingThere(..)));
        if probed.is_ok() {
            say(&format!("verify: drove at http://{addr}/"));
            Target {
                admin: addr,
                listen: None,
                token: token.clone(),
            }
        } else if admin.is_none() && file.is_none() && nothing_there {
            // A fresh checkout: no drove.toml, nothing running. Verify the demo.
            say(&format!("verify: no drove.toml here and no drove answering at {addr}: starting the built-in demo"));
            demo = Some(builtin_demo()?);
            launched = Some(start(config, "the built-in demo", &say)?);
            let l = launched.as_ref().expect("just set");
            Target {
                admin: l.admin,
                listen: l.listen,
                token: token.clone(),
            }
        } else {
            let why = probed.err().map(|e| e.to_string()).unwrap_or_default();
            if nothing_there {
                anyhow::bail!(
                    "{why}: no drove answers there; start one (`drove up`), point --admin at it, or use `drove verify --start -c {}`",
                    config.display()
                );
            }
            anyhow::bail!("{why}");
        }
    };

    let opts = options(&args, file.as_ref().or(demo.as_ref()));
    let started = tokio::time::Instant::now();
    let json = args.json;
    let outcome = rt.block_on(async {
        // SIGINT or SIGTERM: stop the drills (their guards undrain and SIGCONT what they
        // touched), then the drove this command started.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        anyhow::Ok(tokio::select! {
            r = drove_verify::run_all_with(&target, &opts, |r| {
                if !json {
                    println!("{}", r.line());
                    let _ = std::io::stdout().flush();
                }
            }) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        })
    })?;
    let elapsed = started.elapsed();
    // Dropping the drills' futures above already undrained and thawed what they touched.
    if let Some(l) = launched {
        l.stop();
    }
    let Some(results) = outcome else {
        anyhow::bail!("interrupted");
    };
    let results = results?;
    if let Some(path) = &args.junit {
        std::fs::write(path, drove_verify::junit_xml(&results, elapsed))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let failed = results.iter().filter(|r| r.passed == Some(false)).count();
    if json {
        let v = drove_verify::results_json(&results, &target, elapsed);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let passed = results.iter().filter(|r| r.passed == Some(true)).count();
        let skipped = results.iter().filter(|r| r.passed.is_none()).count();
        println!(
            "verify: {passed} passed, {failed} failed, {skipped} skipped in {:.1}s",
            elapsed.as_secs_f64()
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `--start` runs the file's services on the file's fixed ports (only the balancer and
/// admin move to free ports). When another process holds one of them — typically a
/// drove already running this file — the drills would measure that one, or the new
/// instances would never start: refuse, saying who holds what.
fn refuse_taken_ports(c: &drove_config::Config, config: &Path) -> anyhow::Result<()> {
    let mut taken = Vec::new();
    for s in &c.services {
        if let drove_config::PortSpec::Base(base) = s.port {
            for k in 0..s.instances {
                let Some(port) = base.checked_add(k as u16) else {
                    continue;
                };
                if let Some(used) = drove_supervisor::port_in_use(port) {
                    taken.push(format!("{}.{}: {used}", s.name, k + 1));
                }
            }
        }
        // A service on a fixed address of its own (`ready = { tcp = "127.0.0.1:6379" }`).
        if let Some(drove_config::ProbeKind::Tcp { addr: Some(addr) }) =
            s.ready.as_ref().map(|r| &r.kind)
        {
            if let Some(used) = drove_supervisor::listening_on(*addr) {
                taken.push(format!("{} (ready on {addr}): {used}", s.name));
            }
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    let drove_there = taken.iter().any(|t| t.contains("drove"));
    anyhow::bail!(
        "cannot start a drove from {file} to verify: {}.{} Verify the drove that runs it with `drove verify -c {file}` (without --start), or stop it first (`drove down -c {file}`)",
        taken.join("; "),
        if drove_there {
            " Another drove seems to run this file: the drills would measure it, not the one started here."
        } else {
            ""
        },
        file = config.display()
    )
}

fn builtin_demo() -> anyhow::Result<drove_config::Config> {
    let exe = std::env::current_exe().context("cannot find the drove executable")?;
    Ok(drove_config::builtin_demo(&exe.to_string_lossy()))
}

fn start(config: &Path, what: &str, say: &dyn Fn(&str)) -> anyhow::Result<drove_verify::Launched> {
    let exe = std::env::current_exe().context("cannot find the drove executable")?;
    let l = drove_verify::Launched::start(&exe, config)?;
    say(&format!(
        "verify: started drove (pid {}) from {what}: balancer http://{}/, admin http://{}/",
        l.pid(),
        l.listen.map_or("-".into(), |a| a.to_string()),
        l.admin
    ));
    Ok(l)
}

//! `drove`: one binary and one TOML file that run a web app as N instances behind a
//! built-in load balancer. This is the thin CLI: argument parsing (clap), exit codes, and
//! the admin-API clients; everything else lives in `crates/`.

mod bench_cmd;
mod cli_admin;
mod down_wait;
mod export_balancer;
mod export_cmd;
mod export_manifests;
mod export_prometheus;
mod export_systemd;
mod verify_cmd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for configuration errors (sysexits EX_DATAERR... EX_USAGE is 64).
const EXIT_CONFIG: u8 = 64;

/// Run any web app as N instances behind a built-in load balancer.
///
/// Quick start: `drove up` (no drove.toml here: runs the built-in demo, 3 instances
/// behind http://127.0.0.1:8080/), then `drove status`, `drove scale web=5`,
/// `drove restart web`, `drove down`. `drove init` writes a commented drove.toml.
#[derive(Debug, Parser)]
#[command(name = "drove", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Admin API address of a running drove (default: `[admin] listen` of the config
    /// file if there is one, else 127.0.0.1:9900).
    #[arg(long, global = true, env = "DROVE_ADMIN", value_name = "ADDR")]
    admin: Option<SocketAddr>,

    /// Bearer token for the admin API (`[admin] token`).
    #[arg(
        long,
        global = true,
        env = "DROVE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Format of drove's own log lines (on stderr; `DROVE_LOG=debug` for more). Text is
    /// coloured only on a terminal, and never with `NO_COLOR` set.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// `-c FILE`, on every command that reads a config (not on `bench`, where `-c` is the
/// connection count, as in wrk).
#[derive(Debug, Clone, clap::Args)]
struct ConfigArg {
    /// Config file.
    #[arg(
        id = "config",
        short = 'c',
        long = "config",
        default_value = "drove.toml",
        value_name = "FILE"
    )]
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the services, the balancer and the admin API (the built-in demo when there
    /// is no drove.toml here). Runs in the foreground; Ctrl-C or `drove down` stops it.
    Up {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Override `[balancer] listen` (e.g. 127.0.0.1:0 for a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Override `[admin] listen`.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Do not print the instances' output (it still goes to the log files).
        #[arg(long)]
        quiet: bool,
    },
    /// Validate the config file; errors as file:line:col with the offending line. Exit 64
    /// if there are any.
    Check {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Write a commented drove.toml (to -c FILE, default ./drove.toml).
    Init {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run the demo app on $PORT (what the demo instances run): /, /health,
    /// /health/ready (also /ready), /health/live, /whoami, /session, /slow?ms=, /status/CODE, /work?cpu_ms=, /leak?mb=, /ws, /echo.
    Demo,
    /// Load-test an HTTP endpoint (open or closed model) and report latency percentiles,
    /// errors and the share of requests per instance.
    Bench(Box<bench_cmd::BenchArgs>),
    /// Show every instance: pid, port, state, health, req/s, p99, in-flight, restarts,
    /// last exit, RSS, uptime, and for each one that is not ready, why (the ready probe's
    /// last error, the exit and the next try of a crash loop, a port held by another
    /// program). `--json` prints the full status document (docs/admin-api.md).
    Status {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Print the full JSON status document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change the number of instances of services at runtime: `drove scale web=5`.
    Scale {
        #[command(flatten)]
        cfg: ConfigArg,
        /// SERVICE=N pairs.
        #[arg(required = true, value_name = "SERVICE=N")]
        targets: Vec<String>,
    },
    /// Rolling restart of a service (`drove restart web`) or of one instance (`drove
    /// restart web.2`): one extra instance up and ready first, then each instance drained,
    /// stopped and started again with the same id and port, then the extra one stopped.
    /// Never fewer instances ready than before; zero failed requests.
    Restart {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Service name, or an instance id (SERVICE.N).
        service: String,
    },
    /// Take an instance (e.g. web.2) out of rotation and wait for its in-flight requests;
    /// it keeps running.
    Drain {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Instance id, SERVICE.N.
        instance: String,
    },
    /// Put a drained instance back into rotation.
    Undrain {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Instance id, SERVICE.N.
        instance: String,
    },
    /// Print instance logs (all instances, or one), from the per-instance log files.
    Logs {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Instance id (e.g. web.2) or service name; default: all.
        instance: Option<String>,
    },
    /// Gracefully stop a running drove: finish in-flight requests, stop every service.
    /// Waits until drove and every instance are gone (a progress line says what is
    /// left), so `drove down && drove up` is safe.
    Down {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Return once the shutdown has begun, without waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting (exit 1) after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration_arg, value_name = "DURATION")]
        timeout: std::time::Duration,
    },
    /// Make a running drove re-read its config file (same as SIGHUP) and apply every
    /// change live: services added, changed (rolling restart), scaled or removed;
    /// backends, algorithm, timeouts, retries, health, headers, routes and limits, the
    /// access log, TLS (also a renewed certificate under the same paths), listeners
    /// and [admin] — no request fails, open connections keep going. An invalid file
    /// changes nothing. Prints the plan and what was (and was not) applied; exits 1 if
    /// something was not. See docs/operations.md.
    Reload {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Only print the plan (what would change), apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Replace the running drove by a new binary without downtime: the listening
    /// sockets stay open, requests in flight finish, idle keep-alive connections and
    /// WebSockets are handed over, every instance keeps running (same PID, never
    /// signalled), counters go on. The new binary is checked first; if it refuses, the
    /// running drove goes on and this exits 1 with the reason. Also SIGUSR2. See
    /// docs/operations.md.
    Upgrade {
        #[command(flatten)]
        cfg: ConfigArg,
        /// The binary to run (default: the path drove was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long to wait for the new drove to answer.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration_arg)]
        timeout: std::time::Duration,
    },
    /// Whether this binary can take over a running drove (internal: `drove upgrade`
    /// runs it on the new binary; prints its version and hand-over format as JSON).
    #[command(name = "__upgrade-check", hide = true)]
    UpgradeCheck {
        #[command(flatten)]
        cfg: ConfigArg,
    },
    /// Prove it works: drills under load (distribution, stickiness, failover, freeze,
    /// rolling restart, scale, limits, metrics) against a running drove, or one started
    /// from -c FILE; one line per drill with its numbers; exit 1 if any fails.
    Verify {
        #[command(flatten)]
        cfg: ConfigArg,
        #[command(flatten)]
        args: verify_cmd::VerifyArgs,
    },
    /// The guardian drove starts beside itself: stops the instances' process groups if
    /// drove dies without doing so (internal; see drove-supervisor's guardian.rs).
    #[command(name = "__guardian", hide = true)]
    Guardian,
    /// Print a Grafana dashboard (`grafana`) or Prometheus alert rules (`alerts`) for
    /// drove's metrics, the Prometheus scrape config for drove and its instances
    /// (`prometheus`), drove.toml as Kubernetes manifests (`k8s`) or a Compose file
    /// (`compose`) with drove in front of the replicas, or drove's Dockerfile
    /// (`dockerfile`); see docs/export.md.
    Export {
        #[command(flatten)]
        cfg: ConfigArg,
        #[command(flatten)]
        args: export_cmd::ExportArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Guardian = cli.command {
        let code = drove_supervisor::guardian_main(
            std::io::stdin().lock(),
            Some(std::os::unix::process::parent_id()),
        );
        return ExitCode::from(code as u8);
    }
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drove: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A duration flag, read exactly like a duration in drove.toml (`500ms`, `10s`,
/// `1m30s`; a bare number is an error that suggests the unit).
pub(crate) fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    drove_config::parse_duration(s)
}

/// Colour only on a terminal, and not when `NO_COLOR` is set (no-color.org): log files
/// and pipes get plain text.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the config or prints every error; Err(exit code) on failure.
/// The config at `path`; without a file at the default path, the built-in demo running
/// `drove_exe demo`. The inner error is the exit code for an invalid config (reported).
fn config_or_demo(
    path: &Path,
    drove_exe: &str,
) -> anyhow::Result<Result<drove_config::Config, ExitCode>> {
    if path.exists() {
        Ok(load_config(path))
    } else if path == Path::new("drove.toml") {
        Ok(Ok(drove_config::builtin_demo(drove_exe)))
    } else {
        anyhow::bail!("config file {} not found", path.display());
    }
}

fn load_config(path: &Path) -> Result<drove_config::Config, ExitCode> {
    match drove_config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("drove: warning: {w}");
            }
            Ok(c)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

impl Command {
    /// The config file this command reads (drove.toml for those that take none).
    fn config(&self) -> PathBuf {
        match self {
            Command::Up { cfg, .. }
            | Command::Check { cfg }
            | Command::Init { cfg, .. }
            | Command::Status { cfg, .. }
            | Command::Scale { cfg, .. }
            | Command::Restart { cfg, .. }
            | Command::Drain { cfg, .. }
            | Command::Undrain { cfg, .. }
            | Command::Logs { cfg, .. }
            | Command::Down { cfg, .. }
            | Command::Reload { cfg, .. }
            | Command::Upgrade { cfg, .. }
            | Command::UpgradeCheck { cfg }
            | Command::Verify { cfg, .. }
            | Command::Export { cfg, .. } => cfg.path.clone(),
            Command::Demo | Command::Bench(_) | Command::Guardian => PathBuf::from("drove.toml"),
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.command.config();
    match cli.command {
        Command::Check { .. } => match load_config(&config) {
            Ok(c) => {
                let services = c.services.len();
                println!(
                    "{}: ok ({} service{}{})",
                    config.display(),
                    services,
                    if services == 1 { "" } else { "s" },
                    if c.balancer.is_some() {
                        ", balancer"
                    } else {
                        ""
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        },
        Command::Init { force, .. } => {
            if config.exists() && !force {
                anyhow::bail!("{} exists; use --force to overwrite it", config.display());
            }
            std::fs::write(&config, drove_config::INIT_TEMPLATE)?;
            println!(
                "wrote {} — edit it, then `drove check` and `drove up`",
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            listen,
            admin_listen,
            quiet,
            ..
        } => {
            let exe = std::env::current_exe()?;
            let config = match config_or_demo(&config, &exe.to_string_lossy())? {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if config.path.is_none() {
                println!(
                    "drove: no drove.toml here: running the built-in demo (3 instances of `drove demo`); `drove init` writes a config to start from"
                );
            }
            let rt = tokio::runtime::Runtime::new()?;
            let color = colour(std::io::IsTerminal::is_terminal(&std::io::stdout()));
            rt.block_on(drove_runtime::up(
                config,
                drove_runtime::UpOptions {
                    log_to_stdout: !quiet,
                    color,
                    listen,
                    admin_listen,
                    guardian: Some(exe),
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::UpgradeCheck { .. } => {
            // The config in force must be one this binary accepts.
            if config.exists() {
                if let Err(code) = load_config(&config) {
                    return Ok(code);
                }
            }
            let answer = drove_api::UpgradeCheck {
                version: env!("CARGO_PKG_VERSION").to_string(),
                handoff_format: drove_runtime::upgrade::HANDOFF_FORMAT,
            };
            println!("{}", serde_json::to_string(&answer)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            let rt = tokio::runtime::Runtime::new()?;
            match rt.block_on(drove_demo::main_from_env()) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("drove demo: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Bench(args) => {
            let code = bench_cmd::run(*args)?;
            Ok(ExitCode::from(code as u8))
        }
        Command::Verify { args, .. } => Ok(ExitCode::from(verify_cmd::run(
            args,
            &config,
            cli.admin,
            cli.token.as_deref(),
        )?)),
        Command::Export { args, .. } => {
            let loaded = if args.kind.reads_config() {
                // In a container drove is on the PATH: the demo runs `drove demo`.
                match config_or_demo(&config, "drove")? {
                    Ok(c) => Some(c),
                    Err(code) => return Ok(code),
                }
            } else {
                None
            };
            Ok(ExitCode::from(export_cmd::run(
                args,
                loaded.as_ref(),
                cli.admin,
            )?))
        }
        cmd => cli_admin::run(cmd, &config, cli.admin, cli.token.as_deref()),
    }
}

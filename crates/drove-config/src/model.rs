//! The validated configuration: plain Rust types, no TOML. Everything here has passed
//! validation, so consumers never re-check names, ranges or cross references.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A validated drove.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[services.NAME]` sections, in file order.
    pub services: Vec<ServiceConfig>,
    /// The `[balancer]` section, if present.
    pub balancer: Option<BalancerConfig>,
    /// `[limits.NAME]` sections by name.
    pub limits: BTreeMap<String, LimitConfig>,
    /// The `[admin]` section (defaults when absent).
    pub admin: AdminConfig,
    /// The file this came from (absolute), `None` for built-in configs.
    pub path: Option<PathBuf>,
    /// Things that are allowed but probably unwanted (e.g. an exposed admin API without a
    /// token). The binary prints them at startup.
    pub warnings: Vec<String>,
}

impl Config {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// One `[services.NAME]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The NAME of `[services.NAME]` (`[a-z0-9_-]+`).
    pub name: String,
    /// What to run; `{port}` and `{instance}` are substituted per instance.
    pub command: CommandSpec,
    /// How many instances to run (may be 0).
    pub instances: u32,
    /// How instances get their ports.
    pub port: PortSpec,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory, absolute.
    pub cwd: PathBuf,
    /// Readiness probe gating traffic; `None` = ready as soon as started.
    pub ready: Option<ProbeConfig>,
    /// Liveness/health probe; `None` = no active health checks by the supervisor.
    pub health: Option<ProbeConfig>,
    /// How instances are stopped.
    pub stop: StopConfig,
    /// How crashed instances are restarted.
    pub restart: RestartConfig,
    /// RSS above which an instance is restarted (rolling, drained), in bytes.
    pub max_memory: Option<u64>,
    /// Services that must be ready before this one starts.
    pub depends_on: Vec<String>,
    /// Per-instance log files.
    pub logs: LogsConfig,
}

impl ServiceConfig {
    /// The port of instance `k` (1-based) when the port is a fixed base.
    pub fn base_port_of(&self, instance: u32) -> Option<u16> {
        match self.port {
            PortSpec::Base(base) if instance >= 1 => {
                u16::try_from(u32::from(base) + instance - 1).ok()
            }
            _ => None,
        }
    }
}

/// A command: a shell string or an argv array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// Run via `sh -c`.
    Shell(String),
    /// Run directly; the first element is the program.
    Argv(Vec<String>),
}

impl CommandSpec {
    /// Substitutes `{port}` and `{instance}` (and `{{`/`}}` escapes). `${...}` shell
    /// expansions and brace expansions like `{a,b}` are left alone.
    pub fn substitute(&self, port: Option<u16>, instance: u32) -> CommandSpec {
        let port = port.map(|p| p.to_string());
        let instance = instance.to_string();
        let mut values = vec![("instance", instance.as_str())];
        if let Some(p) = &port {
            values.push(("port", p.as_str()));
        }
        let one = |s: &str| drove_template::render(s, &values);
        match self {
            CommandSpec::Shell(s) => CommandSpec::Shell(one(s)),
            CommandSpec::Argv(v) => CommandSpec::Argv(v.iter().map(|s| one(s)).collect()),
        }
    }
}

/// How a service's instances get ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    /// Instance k gets `base + k - 1`.
    Base(u16),
    /// drove picks free ports.
    Auto,
    /// The service listens on nothing (a worker).
    None,
}

/// A ready or health probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// What is probed.
    pub kind: ProbeKind,
    /// Time between probes.
    pub interval: Duration,
    /// Time after which one probe counts as failed.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    pub fall: u32,
    /// Ready probes only: give up on an instance not ready after this long.
    pub start_timeout: Duration,
    /// HTTP only: the one accepted status; `None` = any 2xx or 3xx.
    pub expect_status: Option<u16>,
}

/// The kind of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// `GET path` on the instance (or backend) address.
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
    /// A TCP connect.
    Tcp {
        /// `None` = the instance (or backend) address itself.
        addr: Option<SocketAddr>,
    },
    /// A command run via `sh -c`; exit 0 = success.
    Command {
        /// The shell command.
        cmd: String,
    },
}

/// A stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
    /// SIGHUP.
    Hup,
    /// SIGKILL.
    Kill,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl Signal {
    /// The conventional name without `SIG`, e.g. `"TERM"`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
        }
    }
}

/// `stop = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct StopConfig {
    /// Signal sent first.
    pub signal: Signal,
    /// Time between the signal and SIGKILL.
    pub grace: Duration,
}

/// When an exited instance is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always, whatever the exit status.
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Never.
    Never,
}

/// `restart = { ... }`: exponential backoff between restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartConfig {
    /// When to restart.
    pub policy: RestartPolicy,
    /// First backoff delay; doubled after each quick exit.
    pub initial_delay: Duration,
    /// Cap on the backoff delay.
    pub max_delay: Duration,
    /// An instance up this long resets its backoff.
    pub reset_after: Duration,
    /// After this many consecutive quick exits the instance is shown as `crashloop`.
    pub crashloop_after: u32,
}

/// `logs = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogsConfig {
    /// Directory of the per-instance log files, absolute.
    pub dir: PathBuf,
    /// Rotate a file above this many bytes.
    pub max_size: u64,
    /// Rotated files kept per instance.
    pub keep: u32,
}

/// The `[balancer]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Accept a connection only once its first bytes have arrived (Linux
    /// `TCP_DEFER_ACCEPT`, nginx's `listen ... deferred`).
    pub defer_accept: bool,
    /// Where requests go.
    pub backends: Backends,
    /// How a backend is picked.
    pub algorithm: Algorithm,
    /// Cookie-based stickiness.
    pub sticky: Option<StickyConfig>,
    /// Retries on another backend.
    pub retries: RetryConfig,
    /// Passive health (ejection on observed failures).
    pub passive: PassiveConfig,
    /// Active health checks of backends; `None` = none.
    pub health: Option<ProbeConfig>,
    /// Cap on the fraction (0.0..=1.0) of backends ejected by health at once.
    pub max_ejected: f64,
    /// Timeouts.
    pub timeouts: TimeoutsConfig,
    /// Response header naming the instance that served; `None` = off.
    pub instance_header: Option<String>,
    /// Networks whose X-Forwarded-For / X-Forwarded-Proto / X-Real-IP are trusted.
    pub trusted_proxies: Vec<Cidr>,
    /// Protocols a client may switch to with `Upgrade` (lowercase); others are stripped.
    pub upgrades: Vec<String>,
    /// Speak HTTP/2 with clients (ALPN `h2` with TLS, prior knowledge without).
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Request id header propagated or generated; `None` = off.
    pub request_id: Option<String>,
    /// Access log format.
    pub access_log: AccessLogFormat,
    /// Access log destination.
    pub access_log_path: LogTarget,
    /// Larger request heads get 431, in bytes.
    pub max_header_size: u64,
    /// Larger request bodies get 413, in bytes; 0 = unlimited.
    pub max_body_size: u64,
    /// `[[balancer.routes]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `backends` entries found through DNS (`{ dns = ... }`, `{ srv = ... }`).
    pub dns_backends: Vec<DnsBackend>,
    /// How those are resolved.
    pub resolver: ResolverConfig,
    /// TLS for client connections; `None` = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Response compression where no route says otherwise; `None` = off (the default).
    pub compress: Option<drove_compress::Settings>,
}

/// `tls = { cert = "...", key = "..." }`: PEM files, absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain (leaf first).
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A `backends` entry whose addresses come from DNS, re-resolved every
/// `resolver.interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsBackend {
    /// What is looked up.
    pub query: DnsQuery,
    /// Weight of each address found (SRV records: the record's weight instead).
    pub weight: u32,
    /// The addresses are backups (SRV records: those above the lowest priority are).
    pub backup: bool,
    /// Prefix of the backends' names (`NAME@ADDR`); defaults to the DNS name.
    pub name: String,
}

/// A DNS lookup for backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// A/AAAA records of `host`, each with `port`.
    Host {
        /// The name looked up.
        host: String,
        /// The port of every address.
        port: u16,
    },
    /// SRV records (`_http._tcp.web.internal`): targets, ports, priorities and weights.
    Srv(String),
}

/// `resolver = { ... }`: how DNS backends are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers; empty = the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Time between two resolutions.
    pub interval: Duration,
}

/// Where the balancer sends requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Backends {
    /// The instances of this service (which exists and has a port).
    Service(String),
    /// A fixed list.
    Static(Vec<StaticBackend>),
}

/// One entry of `backends = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticBackend {
    /// Address.
    pub addr: SocketAddr,
    /// Relative weight (>= 1).
    pub weight: u32,
    /// Used only when no non-backup backend is available.
    pub backup: bool,
    /// Display name; defaults to the address.
    pub name: String,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    /// Weighted round robin.
    RoundRobin,
    /// Fewest in-flight requests.
    LeastConn,
    /// Consistent hash of the client IP.
    IpHash,
    /// Consistent hash of a request key.
    Hash(HashKey),
    /// Best of two random picks by in-flight requests.
    RandomTwo,
    /// Power of two choices over an EWMA of latency.
    P2cEwma,
}

impl Algorithm {
    /// The name used in drove.toml.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::IpHash => "ip_hash",
            Algorithm::Hash(_) => "hash",
            Algorithm::RandomTwo => "random_two",
            Algorithm::P2cEwma => "p2c_ewma",
        }
    }
}

/// What a hash (or rate-limit key) is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header.
    Header(String),
    /// A request cookie.
    Cookie(String),
    /// The request path.
    Path,
    /// The client IP (after trusted-proxy resolution).
    ClientIp,
}

/// `sticky = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    /// Cookie name.
    pub cookie: String,
    /// Cookie Max-Age; zero = session cookie.
    pub max_age: Duration,
}

/// `retries = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first try; 0 disables.
    pub attempts: u32,
    /// Retries allowed as a fraction (0.0..=1.0) of live requests.
    pub budget: f64,
    /// Timeout of each try; `None` = only `timeouts.response` applies.
    pub per_try_timeout: Option<Duration>,
    /// Also retry idempotent requests answered with a 5xx.
    pub on_5xx: bool,
}

/// `passive = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveConfig {
    /// Failures within `fail_timeout` that eject a backend; 0 = off.
    pub max_fails: u32,
    /// Window for counting failures, and ejection time.
    pub fail_timeout: Duration,
    /// Count 5xx responses as failures.
    pub on_5xx: bool,
}

/// `timeouts = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeoutsConfig {
    /// Upstream connect.
    pub connect: Duration,
    /// Reading a client's request head.
    pub header: Duration,
    /// Upstream response head.
    pub response: Duration,
    /// Idle keep-alive connections.
    pub idle: Duration,
    /// In-flight requests get this long at shutdown.
    pub shutdown_grace: Duration,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// Apache/nginx combined format.
    Combined,
    /// One JSON object per line.
    Json,
}

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`"-"`).
    Stdout,
    /// A file, absolute.
    File(PathBuf),
}

/// One `[[balancer.routes]]` entry: a path prefix with a rate limit, its own
/// compression settings, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Path prefix, starting with `/`.
    pub path: String,
    /// Name of a `[limits.NAME]` (exists), or `""` when the route sets no limit (then
    /// no limit has that name, so a lookup in `Config::limits` finds none).
    pub limit: String,
    /// Response compression on this route: its own `compress` over the balancer's, or
    /// the balancer's when it has none; `None` = off.
    pub compress: Option<drove_compress::Settings>,
}

impl RouteConfig {
    /// The rate limit's name, if the route has one.
    pub fn limit_name(&self) -> Option<&str> {
        (!self.limit.is_empty()).then_some(self.limit.as_str())
    }
}

/// One `[limits.NAME]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// What requests are counted by.
    pub key: LimitKey,
    /// Sustained rate.
    pub rate: Rate,
    /// Requests allowed in a burst above the rate.
    pub burst: u32,
    /// Shared with every drove using this Redis (URL); `None` = this process only.
    pub redis: Option<String>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client IP.
    ClientIp,
    /// A request header.
    Header(String),
    /// A request cookie.
    Cookie(String),
}

/// A rate: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Listen address of the admin API, /metrics and dashboard.
    pub listen: SocketAddr,
    /// Bearer token required on requests; `None` = none.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
            token: None,
        }
    }
}

pub use drove_net::Cidr;
